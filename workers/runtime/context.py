"""What an implementation named by a stage's ``implementation`` receives: its :class:`StageContext`.

The one documented signature (docs/runtime.md)::

    def my_stage(ctx: StageContext) -> Any          # runs in a worker thread
    async def my_stage(ctx: StageContext) -> Any    # awaited on the replica's event loop

The return value is the stage's output: anything JSON can carry. It reaches the stages that depend
on this one as ``ctx.outputs[<this stage's name>]`` (a list, one item per call, when this stage fans
out) and the templates as ``outputs.<name>``. Raising fails the call; the runtime retries it up to
the stage's ``retries`` and then fails the request with an error naming the stage and the exception
(raise :class:`StageError` when the message says everything).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from tessera.api.workflow import GenerationOptions


class StageError(RuntimeError):
    """A call that failed for a reason its message says in full (the runtime reports it without a class name)."""


@dataclass(frozen=True)
class Completion:
    """One generated answer."""

    text: str
    tokens: int = 0
    finish_reason: str = "stop"  # stop | length
    # Mean log-probability of the generated tokens under the (grammar-masked) distribution; None where the
    # engine does not report it (vLLM unless asked). Callers use it to break ties between candidates.
    mean_logprob: float | None = None


class Turn(TypedDict):
    role: str  # user | assistant
    content: str


class LLMClient(Protocol):
    """The model deployment a stage's ``model`` names, as the plan places it (shared by stages)."""

    async def generate(self, prompt: str, options: GenerationOptions | None = None, *,
                       system: str | None = None, history: Sequence[Turn] = (), **overrides: Any) -> Completion:
        """``overrides`` are GenerationOptions fields (max_tokens, temperature, stop, grammar, json_schema).

        The chat sent is ``system`` (if any), then ``history`` (earlier turns, such as few-shot examples:
        ``{"role": "user" | "assistant", "content": ...}``), then ``prompt`` as the user's turn."""
        ...

    def stream(self, prompt: str, options: GenerationOptions | None = None, *,
               system: str | None = None, history: Sequence[Turn] = (), **overrides: Any) -> AsyncIterator[str]:
        """The same generation, as pieces of text while they are decided."""
        ...


@dataclass
class StageContext:
    stage: str
    input: Any  # the request's input
    outputs: dict[str, Any]  # dependency name -> its output (a list when it fanned out)
    params: dict[str, Any] = field(default_factory=dict)  # the stage's ``params`` from the workflow
    priority: int = 0
    deadline_s: float = float("inf")  # absolute, on the time.time() clock
    fan_index: int = 0  # which of the stage's fanOut parallel calls this is
    iteration: int = 0  # which of the stage's sequential iterations this is
    previous: Any = None  # this stage's output from the previous iteration
    llm: LLMClient | None = None  # set for stages with a model
