"""Greedy, lossless speculative decoding: a draft proposes tokens, the target verifies them in one
forward pass, and the longest prefix that matches the target's own greedy choices is kept.

The output equals plain greedy decoding token for token: every kept token is the target's argmax
at its position, computed from the target's logits on exactly the accepted prefix (the target's
KV cache is cropped back to the accepted prefix after every step).

The number of drafted tokens adapts to the running acceptance rate and to the measured cost of
drafting and of verifying n tokens; a draft that reports probabilities also stops early once the
product of its top probabilities so far (its estimate that the target keeps the whole draft, as
EAGLE-2 scores draft paths) falls below ``confidence_threshold``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from tessera.workers.llm.draft_head import load_draft_head
from tessera.workers.llm.drafters import FirstProposal, ModelDrafter, NgramDrafter, first_layers, int8_copy
from tessera.workers.llm.loading import load_model
from tessera.workers.llm.steps import LLMRequestError, Target, TokenStep, crop_cache

DraftMethod = Literal["ngram", "layer_skip", "quantized", "draft_head", "draft_head_ngram", "draft_model"]

# Relative cost of a target forward over n new tokens (n -> multiple of one token), measured on
# SmolLM2-135M with 2 CPU threads and weight-first products (23.6, 24.8, 28.2, 46.7, 68.9 ms for 1, 2,
# 4, 8, 16 tokens; docs/engine.md, "CPU matrix products"). It only seeds the draft-length choice until
# the engine has timed its own verification steps.
PRIOR_VERIFY_COST = {1: 1.0, 2: 1.05, 4: 1.19, 8: 1.98, 16: 2.92}


class SpecDecConfig(BaseModel):
    """How a request is decoded speculatively (the planner's plan fills this in per LLM stage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: DraftMethod = Field("draft_head_ngram", description="where drafted tokens come from")
    max_draft_tokens: int = Field(8, ge=1, le=32, description="upper bound of the adaptive draft length")
    adaptive: bool = Field(True, description="adapt the draft length to the running acceptance rate")
    confidence_threshold: float = Field(
        0.1, ge=0.0, le=1.0,
        description="stop drafting once the product of the draft's top probabilities so far is below this",
    )
    ngram_max: int = Field(4, ge=1, le=16, description="longest suffix n-gram looked up in the context")
    ngram_min: int = Field(2, ge=1, le=16, description="shortest suffix n-gram accepted as a match")
    layer_skip_layers: int = Field(10, ge=1, description="layer_skip: how many of the target's first layers draft")
    quantization: Literal["int8"] = Field("int8", description="quantized: weight type of the target's own copy")
    draft_head_path: str | None = Field(
        None, description="draft_head: a trained head file; default: the head shipped for SmolLM2 (trained at first use)"
    )
    draft_model_path: str | None = Field(None, description="draft_model: a local HF directory or .gguf sharing the tokenizer")

    def key(self) -> tuple:
        """What identifies the draft to build (the per-request knobs are not part of it)."""
        return (self.method, self.ngram_max, self.ngram_min, self.layer_skip_layers, self.quantization,
                self.draft_head_path, self.draft_model_path)


# AgentWorkflow's draft methods (camelCase on the wire) -> the engine's drafters.
WORKFLOW_DRAFT_METHODS: dict[str, DraftMethod] = {
    "ngram": "ngram", "layerSkip": "layer_skip", "quantized": "quantized", "draftHead": "draft_head_ngram",
    "draftModel": "draft_model",
}


def from_workflow(spec: dict | None) -> SpecDecConfig | None:
    """The engine's config for an AgentWorkflow stage's ``speculativeDecoding`` (wire form); None when off.

    ``draftHead`` maps to the head combined with n-gram lookup, the faster of the two measured here.
    """
    if not spec or not spec.get("enabled", True):
        return None
    return SpecDecConfig(method=WORKFLOW_DRAFT_METHODS[spec.get("method", "draftHead")],
                         max_draft_tokens=spec.get("draftLength", 4))


def expected_tokens_per_step(alpha: float, draft_len: int) -> float:
    """Tokens one verification yields when each drafted token is accepted with probability alpha."""
    if alpha >= 1.0:
        return draft_len + 1.0
    return (1.0 - alpha ** (draft_len + 1)) / (1.0 - alpha)


class DraftLengthController:
    """Chooses how many tokens to draft next from the running acceptance rate and the measured costs.

    Acceptance is modelled as geometric (each drafted token kept with probability alpha until the
    first miss); alpha is estimated from exponentially weighted counts of kept tokens and misses.
    """

    PROBE_EVERY = 8  # when drafting does not pay, still draft one token this often to re-measure

    def __init__(self, config: SpecDecConfig, decay: float = 0.9):
        self.max_len = config.max_draft_tokens
        self.adaptive = config.adaptive
        self.decay = decay
        self.kept, self.misses = 1.5, 1.0  # prior alpha 0.6
        self.verify_seconds: dict[int, float] = {}
        self.draft_seconds_per_token = 0.0
        self.steps_without_draft = 0

    @property
    def alpha(self) -> float:
        return self.kept / (self.kept + self.misses)

    def verify_cost(self, n_tokens: int) -> float:
        if n_tokens in self.verify_seconds:
            return self.verify_seconds[n_tokens]
        if not self.verify_seconds:
            return _prior_cost(n_tokens)
        nearest = min(self.verify_seconds, key=lambda n: abs(n - n_tokens))
        return self.verify_seconds[nearest] * _prior_cost(n_tokens) / _prior_cost(nearest)

    def next_length(self) -> int:
        if not self.adaptive:
            return self.max_len
        alpha = self.alpha

        def rate(k: int) -> float:
            return expected_tokens_per_step(alpha, k) / (k * self.draft_seconds_per_token + self.verify_cost(k + 1))

        best = max(range(1, self.max_len + 1), key=rate)
        if rate(best) > 1.0 / self.verify_cost(1):
            return best
        self.steps_without_draft += 1
        if self.steps_without_draft >= self.PROBE_EVERY:
            self.steps_without_draft = 0
            return 1
        return 0

    def update(self, drafted: int, accepted: int, draft_seconds: float, verify_seconds: float) -> None:
        n = drafted + 1
        old = self.verify_seconds.get(n)
        self.verify_seconds[n] = verify_seconds if old is None else 0.8 * old + 0.2 * verify_seconds
        if drafted == 0:
            return
        per_token = draft_seconds / drafted
        self.draft_seconds_per_token = 0.8 * self.draft_seconds_per_token + 0.2 * per_token
        self.kept = self.decay * self.kept + accepted
        self.misses = self.decay * self.misses + (1 if accepted < drafted else 0)


def _prior_cost(n_tokens: int) -> float:
    points = sorted(PRIOR_VERIFY_COST.items())
    for (n0, c0), (n1, c1) in zip(points, points[1:]):
        if n_tokens <= n1:
            return c0 + (c1 - c0) * (n_tokens - n0) / (n1 - n0)
    (n0, c0), (n1, c1) = points[-2], points[-1]
    return c1 + (c1 - c0) * (n_tokens - n1) / (n1 - n0)


class SpeculativeSession:
    """One request's drafting state and its speculative step: draft, verify in one target forward,
    keep the longest prefix that equals the target's own choices plus one token of the target's.

    The caller owns the target's KV cache: ``verify(tokens)`` runs the target on ``tokens`` after
    the cache and returns (logits, hidden states) at every position; the step then cuts the cache
    back to the accepted prefix with ``crop(length)``.
    """

    def __init__(self, target: Target, config: SpecDecConfig, prompt_ids: list[int], stats: dict[str, Any]):
        try:
            drafter = drafter_for(target, config)
        except (ValueError, FileNotFoundError) as error:
            raise LLMRequestError(f"speculative.{error}") from None
        self.config = config
        self.controller = DraftLengthController(config)
        self.session = drafter.start(prompt_ids)
        self.stats = stats
        stats.update(method=config.method, drafted_tokens=0, accepted_tokens=0, draft_seconds=0.0,
                     verify_seconds=0.0, draft_lengths={})

    def step(self, ids: list[int], feature, room: int, verify: Callable, crop: Callable[[int], None],
             choose: Callable[[list[int], Any], TokenStep]) -> tuple[list[TokenStep], Any]:
        """Decide the next tokens after ``ids`` (extended in place); returns them and the new feature.

        ``feature`` is the target's last hidden state at the position that chose ``ids[-1]``;
        ``room`` bounds the drafted tokens; ``choose(ids, logits)`` is the target's greedy choice.
        """
        stats = self.stats
        wanted = min(self.controller.next_length(), room)
        started = time.perf_counter()
        draft = self.session.propose(ids, feature, wanted, self.config.confidence_threshold) if wanted > 0 else []
        draft_seconds = time.perf_counter() - started

        started = time.perf_counter()
        logits, hidden = verify([ids[-1], *draft])
        verify_seconds = time.perf_counter() - started

        kept: list[TokenStep] = []
        for i in range(len(draft) + 1):
            kept.append(choose(ids, logits[i]))
            ids.append(kept[-1].token_id)
            if i == len(draft) or kept[-1].token_id != draft[i]:
                break
        accepted = len(kept) - 1
        crop(len(ids) - 1)  # keep the accepted prefix; the newest token is fed next step

        self.controller.update(len(draft), accepted, draft_seconds, verify_seconds)
        stats["target_steps"] = stats.get("target_steps", 0) + 1
        stats["drafted_tokens"] += len(draft)
        stats["accepted_tokens"] += accepted
        stats["draft_seconds"] += draft_seconds
        stats["verify_seconds"] += verify_seconds
        stats["draft_lengths"][len(draft)] = stats["draft_lengths"].get(len(draft), 0) + 1
        return kept, hidden[accepted]

    def close(self) -> None:
        self.session.close()
        drafted = self.stats["drafted_tokens"]
        self.stats["acceptance_rate"] = self.stats["accepted_tokens"] / drafted if drafted else 0.0


class SpeculativeDecoding:
    """The decoding strategy that drafts with ``config``'s drafter and verifies with the target."""

    def __init__(self, config: SpecDecConfig):
        self.config = config

    def steps(self, target: Target, prompt_ids: list[int], budget: int, logits_processor: Callable | None,
              stats: dict[str, Any]) -> Iterator[TokenStep]:
        """Yield the target's greedy tokens, several per target forward when the draft guesses right."""
        speculation = SpeculativeSession(target, self.config, prompt_ids, stats)
        cache = target.new_cache()

        def choose(ids: list[int], logits) -> TokenStep:
            return target.choose(ids, logits, logits_processor)

        try:
            started = time.perf_counter()
            logits, hidden = target.forward(prompt_ids, cache)
            stats["prefill_seconds"] = time.perf_counter() - started
            stats["target_steps"] = 1
            ids = list(prompt_ids)
            step = choose(ids, logits[-1])
            feature = hidden[-1]  # target's last hidden state at the position that chose ids[-1]
            yield step
            ids.append(step.token_id)
            generated = 1
            while generated < budget:
                room = min(budget - generated - 1, target.context_length - len(ids) - 1)
                kept, feature = speculation.step(
                    ids, feature, room, verify=lambda tokens: target.forward(tokens, cache, all_logits=True),
                    crop=lambda length: crop_cache(cache, length), choose=choose)
                generated += len(kept)
                yield from kept
        finally:
            speculation.close()


_build_lock = threading.Lock()


def drafter_for(engine: Target, config: SpecDecConfig):
    """The drafter a config names, built once per engine and reused by later requests."""
    key = config.key()
    with _build_lock:
        if key not in engine._drafters:
            engine._drafters[key] = _build(engine, config)
        return engine._drafters[key]


def _build(engine: Target, config: SpecDecConfig):
    method = config.method
    if method == "ngram":
        return NgramDrafter(config.ngram_max, config.ngram_min)
    if method == "layer_skip":
        return ModelDrafter(first_layers(engine.model, config.layer_skip_layers), engine.device)
    if method == "quantized":
        if engine.device != "cpu":
            raise ValueError("quantized: the int8 dynamic-quantized draft runs on CPU only")
        return ModelDrafter(int8_copy(engine.model), engine.device)
    if method in ("draft_head", "draft_head_ngram"):
        head = load_draft_head(engine, config.draft_head_path)
        if method == "draft_head":
            return head
        return FirstProposal([NgramDrafter(config.ngram_max, config.ngram_min), head])
    if method == "draft_model":
        if not config.draft_model_path:
            raise ValueError("draft_model_path: required when method is draft_model")
        draft, _tokenizer = load_model(config.draft_model_path, device=engine.device, threads=None)
        if draft.config.vocab_size != engine.model.config.vocab_size:
            raise ValueError(
                f"draft_model_path: the draft's vocabulary ({draft.config.vocab_size}) differs from "
                f"the target's ({engine.model.config.vocab_size}); a draft must share the tokenizer"
            )
        return ModelDrafter(draft, engine.device)
    raise ValueError(f"method: unknown draft method {method!r}")
