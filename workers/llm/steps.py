"""The types a decoding step shares: the engine, the decoding strategies and the drafters all use
these, and none of them imports another for them (no import circle between the LLM modules).

A ``DecodingStrategy`` turns a prompt into the target's tokens, one ``TokenStep`` at a time: plain
decoding (``engine.PlainDecoding``) or speculative decoding (``specdec.SpeculativeDecoding``). It
talks to the model through the ``Target`` protocol, which ``LLMEngine`` implements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Protocol


class LLMRequestError(ValueError):
    """A request the engine cannot serve; the message names the field and the reason."""


@dataclass
class TokenStep:
    """One generated token and its log-probability under the target model."""

    token_id: int
    logprob: float


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    mean_logprob: float  # mean log-probability of the generated tokens (for ranking candidates)
    prompt_tokens: int
    seconds: float  # from submission to the last token
    stats: dict[str, Any] = field(default_factory=dict)
    queued_seconds: float = 0.0  # waiting for a place in the running batch
    first_token_seconds: float = 0.0  # from submission to the first token


def crop_cache(cache, length: int) -> None:
    """Keep the first ``length`` positions of a transformers KV cache (newer ones are dropped)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class Target(Protocol):
    """What a decoding strategy needs from the target model."""

    model: Any
    tokenizer: Any
    name: str
    device: str
    context_length: int
    eos_token_ids: frozenset[int]
    _drafters: dict[tuple, Any]  # SpecDecConfig.key() -> the drafter built for this target

    def encode(self, prompt: str) -> list[int]: ...

    def chat_prompt(self, messages: list[dict]) -> str: ...

    def forward(self, input_ids: list[int], cache, all_logits: bool = False): ...

    def new_cache(self): ...

    def choose(self, context_ids: list[int], logits, logits_processor: Callable | None) -> TokenStep: ...

    def process(self, context_ids: list[int], logits, logits_processor: Callable | None): ...


class DecodingStrategy(Protocol):
    """How one request's tokens are decided; ``stats`` receives the strategy's own figures
    (``method``, ``target_steps`` and, for speculative decoding, the drafting counts)."""

    def steps(self, target: Target, prompt_ids: list[int], budget: int, logits_processor: Callable | None,
              stats: dict[str, Any]) -> Iterator[TokenStep]: ...
