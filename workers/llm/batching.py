"""A continuous-batching engine for CPU classes and the embedded default model.

One scheduler thread owns the model. Between two decode steps it admits waiting requests into the
running batch (the most urgent first, see ``AdmissionQueue``), prefills each, and joins its KV
cache to the batch's; then one forward pass decodes one token for every running request. A
request leaves the batch as soon as it ends, and the next waiting one takes its place.

- Batch rows are left-padded to a common cache width; the attention mask hides the padding and
  each row keeps its own positions, so every request decodes as it would alone.
- Grammar-constrained requests (an EBNF ``grammar`` or a ``json_schema``) go through xgrammar: a
  matcher per request fills that request's row of a token bitmask before each choice.
- When one greedy request runs alone, the engine's speculative step decodes it (draft, verify
  several tokens in one forward, keep what equals the target's own choices): lossless, and the
  single stream gets faster. With several requests the batch already keeps the CPU busy.

    engine = BatchingEngine.load_default()
    result = await engine.generate(prompt, max_tokens=64, stop=[";"], grammar=ebnf, priority=0)
    async for piece in engine.stream(prompt, options=GenerationOptions(max_tokens=64)): ...
    engine.submit(prompt, max_tokens=64).result()        # from plain (non-async) threads
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Literal

from pydantic import ValidationError

from tessera.api.workflow import GenerationOptions
from tessera.workers.llm.engine import LLMEngine, StopText
from tessera.workers.llm.grammars import grammar_compiler
from tessera.workers.llm.metrics import record_generation
from tessera.workers.llm.specdec import SpecDecConfig, SpeculativeSession
from tessera.workers.llm.steps import GenerationResult, LLMRequestError, TokenStep, crop_cache

DEFAULT_MAX_BATCH = 16
PREFILL_TOKENS = 2048  # prompt tokens one packed prefill forward takes at most (its mask is this squared)
CACHE_ROOM = 64  # cache columns allocated ahead of the widest row
# Whitespace characters a JSON answer may put between two elements: room for indented nesting, but a
# small model cannot fill its token budget with tabs inside an object that never closes.
JSON_MAX_WHITESPACE = 16
# How long an idle engine waits after a request arrives for others to prefill with it: a burst's requests
# arrive a few milliseconds apart, and one packed prefill computes their shared prefix once (as Ray Serve's
# ``@serve.batch`` waits ``batch_wait_timeout_s``, 0.01 s by default). A running batch admits at its next step.
ADMISSION_WINDOW_S = 0.01


# ---------------------------------------------------------------------------- admission
@dataclass(order=True)
class _Waiting:
    priority: int
    arrival: int
    request: "Request" = field(compare=False)


class AdmissionQueue:
    """Waiting requests in admission order: lower ``priority`` first (vLLM's convention), then arrival."""

    def __init__(self):
        self._heap: list[_Waiting] = []
        self._arrivals = itertools.count()

    def push(self, request: "Request") -> None:
        heapq.heappush(self._heap, _Waiting(request.priority, next(self._arrivals), request))

    def pop(self, free_slots: int) -> list["Request"]:
        """Up to ``free_slots`` requests to admit now, most urgent first."""
        return [heapq.heappop(self._heap).request for _ in range(min(free_slots, len(self._heap)))]

    def __len__(self) -> int:
        return len(self._heap)


# ---------------------------------------------------------------------------- requests
class Request:
    """One submitted generation: its options, its decoding state and where its text goes.

    ``result(timeout)`` blocks until the end; ``pieces()`` yields text as it is decided. Async
    callers use ``BatchingEngine.generate``/``stream`` instead.
    """

    def __init__(self, prompt_ids: list[int], options: GenerationOptions, priority: int, seed: int | None,
                 speculative: bool, matcher, tokenizer, budget: int, model: str = ""):
        self.model = model  # the metrics' label
        self.prompt_ids = prompt_ids
        self.options = options
        self.priority = priority
        self.seed = seed
        self.speculative = speculative and options.temperature == 0.0
        self.matcher = matcher  # xgrammar GrammarMatcher, or None
        self.budget = budget
        self.ids = list(prompt_ids)
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.text = StopText(tokenizer, list(options.stop))
        self.finish_reason: Literal["stop", "length"] = "length"
        self.stats: dict[str, Any] = {"method": "batched", "target_steps": 0, "batch_sizes": {}}
        self.submitted = time.perf_counter()
        self.admitted = self.first_token = self.finished = 0.0
        self.feature = None  # the target's last hidden state at the position that chose ids[-1]
        self.speculation: SpeculativeSession | None = None
        self.generator = None
        self.cancelled = False
        self._pieces: queue.SimpleQueue = queue.SimpleQueue()
        self._async: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None
        self._done = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None

    # -- consumer side
    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"no result within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def pieces(self) -> Iterator[str]:
        while True:
            item = self._pieces.get()
            if item is None:
                break
            yield item
        self.result()  # raises the request's error, if any

    def cancel(self) -> None:
        """Stop decoding this request at the next step (a client that went away)."""
        self.cancelled = True

    # -- scheduler side
    def _emit(self, item: str | None) -> None:
        if self._async is not None:
            loop, pieces = self._async
            loop.call_soon_threadsafe(pieces.put_nowait, item)
        else:
            self._pieces.put(item)

    def accept(self, step: TokenStep, eos_ids: frozenset[int]) -> bool:
        """Take one decided token (the caller appends it to ``ids``); returns whether the request ended."""
        if not self.token_ids and not self.logprobs:
            self.first_token = time.perf_counter()
        self.logprobs.append(step.logprob)
        if self.matcher is not None:
            self.matcher.accept_token(step.token_id)
        if step.token_id in eos_ids:
            self.finish_reason = "stop"
            return True
        self.token_ids.append(step.token_id)
        piece, stopped = self.text.push(self.token_ids)
        if piece:
            self._emit(piece)
        if stopped or (self.matcher is not None and self.matcher.is_terminated()):
            self.finish_reason = "stop"
            return True
        return len(self.token_ids) >= self.budget

    def finish(self, error: BaseException | None = None) -> None:
        self.finished = time.perf_counter()
        if error is None:
            tail = self.text.flush(self.token_ids)
            if tail:
                self._emit(tail)
            self.stats.update(generated_tokens=len(self.token_ids), decoded_tokens=len(self.logprobs),
                              seconds=self.finished - self.submitted)
            self.stats["mean_tokens_per_step"] = len(self.logprobs) / max(1, self.stats["target_steps"])
            if self.speculation is not None:
                self.speculation.close()
            self._result = GenerationResult(
                text=self.text.text, token_ids=self.token_ids, finish_reason=self.finish_reason,
                mean_logprob=sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0,
                prompt_tokens=len(self.prompt_ids), seconds=self.finished - self.submitted, stats=self.stats,
                queued_seconds=self.admitted - self.submitted,
                first_token_seconds=(self.first_token or self.finished) - self.submitted,
            )
            record_generation(self.model, self.stats)
        self._error = error
        self._done.set()
        self._emit(None)


# ---------------------------------------------------------------------------- the batch
class _Batch:
    """The running requests and their KV cache: row i of every cache tensor belongs to requests[i].

    Rows are left-padded to one width; ``mask`` (rows x width) is 1 where a row has a real token.
    """

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.requests: list[Request] = []
        self.cache = None
        self.mask = None

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def width(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def join(self, requests: list[Request], rows: list[list[tuple]]) -> None:
        """Add prefilled requests; ``rows[i]`` holds request i's (keys, values) per layer, each
        [1, heads, prompt length, head dim]. One copy puts old and new rows, right-aligned, into
        fresh buffers."""
        import torch
        from transformers.cache_utils import Cache

        lengths = [layers[0][0].shape[-2] for layers in rows]
        width = max(self.width, *lengths)
        old = [] if self.cache is None else [(layer.keys, layer.values) for layer in self.cache.layers]
        layers = []
        for i in range(len(rows[0])):
            parts = ([old[i]] if old else []) + [layers_of[i] for layers_of in rows]
            layers.append(_growing_layer([k for k, _ in parts], [v for _, v in parts], width))
        self.cache = Cache(layers=layers)
        masks = ([self.mask] if self.mask is not None else []) + [torch.ones(1, n, dtype=torch.long) for n in lengths]
        self.mask = torch.cat([_left_pad(m, width, dim=1) for m in masks])
        self.requests.extend(requests)

    def remove(self, done: list[Request]) -> None:
        """Drop finished rows, then the leading columns that are padding in every row left."""
        import torch
        from transformers.cache_utils import Cache

        keep = [i for i, r in enumerate(self.requests) if r not in done]
        if not keep:
            self.requests, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(keep)
        self.requests = [self.requests[i] for i in keep]
        self.mask = self.mask[index]
        first_real = int(self.mask.argmax(dim=1).min())  # leading columns no row uses
        self.mask = self.mask[:, first_real:]
        self.cache = Cache(layers=[
            _growing_layer([layer.keys[index, :, first_real:]], [layer.values[index, :, first_real:]], self.width)
            for layer in self.cache.layers])

    def forward(self, tokens):
        """One token per row: returns (logits [rows, vocab], last hidden states [rows, hidden])."""
        import torch

        model = self.engine.model
        ids = torch.tensor(tokens, dtype=torch.long)[:, None]
        positions = self.mask.sum(dim=1, keepdim=True)
        self.mask = torch.cat([self.mask, torch.ones(len(tokens), 1, dtype=torch.long)], dim=1)
        with torch.inference_mode():
            hidden = model.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                                 cache=self.cache, use_cache=True).last_hidden_state[:, -1]
            logits = model.lm_head(hidden)
        return logits.float(), hidden

    def crop(self, length: int) -> None:
        """Single row only (speculative decoding): keep the first ``length`` cached positions."""
        import torch

        crop_cache(self.cache, length)
        self.mask = torch.ones(1, length, dtype=torch.long)


@functools.cache
def _growing_layer_class():
    """The batch's cache layer class; its base, transformers' DynamicLayer, is imported at first use."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """One layer of the batch's KV cache in buffers with free columns after the widest row: a decode
        step writes its column in place, where DynamicLayer concatenates (a copy of the whole cache
        per layer and step). ``keys``/``values`` are views of the used columns."""

        def __init__(self, keys: list, values: list, width: int):
            super().__init__()
            self.device, self.is_initialized = keys[0].device, True
            self._length = width
            self._keys, self._values = _right_aligned(keys, width), _right_aligned(values, width)
            self._view()

        def _view(self) -> None:
            self.keys, self.values = self._keys[:, :, : self._length], self._values[:, :, : self._length]

        def update(self, key_states, value_states, *args, **kwargs):
            end = self._length + key_states.shape[-2]
            if end > self._keys.shape[-2]:
                self._keys = _right_aligned([self.keys], self._length, room=max(CACHE_ROOM, end - self._length))
                self._values = _right_aligned([self.values], self._length, room=max(CACHE_ROOM, end - self._length))
            self._keys[:, :, self._length : end] = key_states
            self._values[:, :, self._length : end] = value_states
            self._length = end
            self._view()
            return self.keys, self.values

        def crop(self, tokens_to_remove: int) -> None:
            self._length -= abs(tokens_to_remove)
            self._view()

    return GrowingLayer


def _growing_layer(keys: list, values: list, width: int):
    return _growing_layer_class()(keys, values, width)


def _right_aligned(parts: list, width: int, room: int = 0):
    """Rows of ``parts`` ([rows, heads, length <= width, dim] each) stacked into one zeroed buffer of
    ``width + CACHE_ROOM`` columns (or ``width + room``), each row ending at column ``width``: the
    zeros on the left are padding that the mask hides (zeros, not uninitialised memory, so that no
    NaN can reach a masked product)."""
    first = parts[0]
    rows = sum(p.shape[0] for p in parts)
    buffer = first.new_zeros(rows, first.shape[1], width + (room or CACHE_ROOM), first.shape[3])
    row = 0
    for part in parts:
        buffer[row : row + part.shape[0], :, width - part.shape[-2] : width] = part
        row += part.shape[0]
    return buffer


def _left_pad(tensor, width: int, dim: int = 2):
    import torch.nn.functional as F

    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]  # F.pad lists dims from the last one back
    return F.pad(tensor, pad)


# ---------------------------------------------------------------------------- the engine
class BatchingEngine:
    """Serves many requests at once on one model (see the module docstring)."""

    def __init__(self, engine: LLMEngine, max_batch_size: int = DEFAULT_MAX_BATCH,
                 speculative: SpecDecConfig | None = None, share_prefixes: bool = True,
                 admission_window_s: float = ADMISSION_WINDOW_S):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be at least 1, got {max_batch_size}")
        if admission_window_s < 0:
            raise ValueError(f"admission_window_s: must be at least 0, got {admission_window_s}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.speculative = speculative
        self.share_prefixes = share_prefixes  # prompts prefilled together compute a shared prefix once
        self.admission_window_s = admission_window_s
        self._waiting = AdmissionQueue()
        self._batch = _Batch(engine)
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"batching-{engine.name}", daemon=True)
        self._thread.start()

    @classmethod
    def load_default(cls, max_batch_size: int = DEFAULT_MAX_BATCH, speculative: SpecDecConfig | None = None,
                     **load) -> "BatchingEngine":
        return cls(LLMEngine.load_default(**load), max_batch_size, speculative)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.engine.chat_prompt(messages)

    # ------------------------------------------------------------------ public API
    def submit(self, prompt: str, options: GenerationOptions | dict | None = None, *, priority: int = 0,
               seed: int | None = None, speculative: bool = True, **fields) -> Request:
        """Queue one request; ``options`` or the same fields as keywords (``max_tokens``,
        ``temperature``, ``stop``, ``grammar``, ``json_schema``). Bad input raises LLMRequestError
        naming the field."""
        request = self._request(prompt, options, priority, seed, speculative, fields)
        with self._wake:
            if self._stopped:
                raise RuntimeError("the engine is closed")
            self._waiting.push(request)
            self._wake.notify()
        return request

    async def generate(self, prompt: str, options: GenerationOptions | dict | None = None, *, priority: int = 0,
                       seed: int | None = None, speculative: bool = True, **fields) -> GenerationResult:
        """The whole answer (text, token ids, finish reason, timings, stats)."""
        pieces = self.stream(prompt, options, priority=priority, seed=seed, speculative=speculative, **fields)
        async for _piece in pieces:
            pass
        return pieces.request.result(0)

    def stream(self, prompt: str, options: GenerationOptions | dict | None = None, *, priority: int = 0,
               seed: int | None = None, speculative: bool = True, **fields) -> "_AsyncPieces":
        """Text pieces as they are decided (``async for``); ``.request.result()`` afterwards."""
        return _AsyncPieces(self, prompt, options, priority, seed, speculative, fields)

    def close(self) -> None:
        """Stop the scheduler; running and waiting requests end with an error."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ validation
    def _request(self, prompt: Any, options: Any, priority: Any, seed: Any, speculative: bool,
                 fields: dict) -> Request:
        options = _options(options, fields)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise LLMRequestError(f"priority: must be an integer, got {priority!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise LLMRequestError(f"seed: must be an integer, got {seed!r}")
        prompt_ids = self.engine.encode_prompt(prompt)
        budget = min(options.max_tokens, self.engine.context_length - len(prompt_ids))
        matcher = self._matcher(options)
        return Request(prompt_ids, options, priority, seed, speculative, matcher, self.engine.tokenizer, budget,
                       self.engine.name)

    def _matcher(self, options: GenerationOptions):
        if options.grammar is None and options.json_schema is None:
            return None
        if options.grammar is not None and options.json_schema is not None:
            raise LLMRequestError("grammar: give at most one of grammar and json_schema")
        import xgrammar

        compiler = grammar_compiler(self.engine.tokenizer, self.engine.model.config.vocab_size,
                                    tuple(sorted(self.engine.eos_token_ids)))
        try:
            if options.grammar is not None:
                compiled = compiler.compile_grammar(options.grammar)
            else:
                compiled = compiler.compile_json_schema(json.dumps(options.json_schema),
                                                        max_whitespace_cnt=JSON_MAX_WHITESPACE)
        except Exception as error:  # xgrammar reports syntax errors as RuntimeError/ValueError
            name = "grammar" if options.grammar is not None else "json_schema"
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LLMRequestError(f"{name}: {first_line}") from None
        return xgrammar.GrammarMatcher(compiled)

    # ------------------------------------------------------------------ the scheduler
    def _run(self) -> None:
        self._bitmask = None
        pending: list[Request] = []  # admitted (a batch slot is theirs), not prefilled yet
        while True:
            with self._wake:
                while not self._stopped and not len(self._waiting) and not len(self._batch) and not pending:
                    self._wake.wait()
                if self._stopped:
                    break
                free = self.max_batch_size - len(self._batch) - len(pending)
                if not len(self._batch) and not pending:  # idle: let the rest of a burst arrive
                    window_ends = time.perf_counter() + self.admission_window_s
                    while not self._stopped and len(self._waiting) < free:
                        left = window_ends - time.perf_counter()
                        if left <= 0:
                            break
                        self._wake.wait(left)
                for request in self._waiting.pop(free):
                    request.admitted = time.perf_counter()
                    pending.append(request)
            group = _prefill_group(pending)
            del pending[: len(group)]
            try:
                if group:
                    self._prefill(group)
                if len(self._batch):
                    self._step()
            except Exception as error:  # a bug must not hang callers: fail what was running
                for request in self._batch.requests + group:
                    if not request._done.is_set():
                        request.finish(error)
                self._batch = _Batch(self.engine)
        closed = RuntimeError("the engine was closed")
        for request in self._batch.requests + pending + self._waiting.pop(len(self._waiting)):
            request.finish(closed)

    def _prefill(self, group: list[Request]) -> None:
        """Prefill the group's prompts in one forward, packed into one row (no padding to compute),
        then choose each first token and join the batch.

        ``_packing`` lays the prompts out: position ids restart at 0 for each prompt, and the mask
        lets each token attend to its own prompt's earlier tokens only, so every prompt gets the
        keys, values and logits it would get alone. A prompt that begins like an earlier prompt of
        the group (same system prompt, same schema) computes only its own suffix: its first
        positions are the earlier prompt's keys and values, which are the ones it would compute
        (same tokens at the same positions, causal attention), as vLLM's prefix caching reuses them.
        """
        import torch

        for request in [r for r in group if r.cancelled]:
            request.finish()
        group = [r for r in group if not r.cancelled]
        if not group:
            return
        started = time.perf_counter()
        ids, positions, mask, sources = _packing([r.prompt_ids for r in group], self.share_prefixes)
        cache = self.engine.new_cache()
        model = self.engine.model
        with torch.inference_mode():
            hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                 use_cache=True).last_hidden_state[0]
            last = hidden[[s[-1] for s in sources]]
            logits = model.lm_head(last).float()
        seconds = time.perf_counter() - started
        steps = self._decide(group, logits)
        joining, rows = [], []
        for i, (request, step) in enumerate(zip(group, steps)):
            request.stats["target_steps"] += 1
            request.stats.update(prefill_seconds=seconds, prefill_group=len(group),
                                 prefill_tokens=ids.shape[1], prefill_prompt_tokens=sum(map(len, sources)))
            request.feature = last[i]
            request.ids.append(step.token_id)
            if request.accept(step, self.engine.eos_token_ids):
                request.finish()
                continue
            joining.append(request)
            index = torch.tensor(sources[i])
            rows.append([(layer.keys[:, :, index], layer.values[:, :, index]) for layer in cache.layers])
        if joining:
            self._batch.join(joining, rows)

    def _step(self) -> None:
        batch = self._batch
        if len(batch) == 1 and self.speculative is not None and batch.requests[0].speculative:
            done = self._speculative_step(batch.requests[0])
        else:
            logits, hidden = batch.forward([r.ids[-1] for r in batch.requests])
            done = []
            for row, (request, step) in enumerate(zip(batch.requests, self._decide(batch.requests, logits))):
                request.stats["target_steps"] += 1
                sizes = request.stats["batch_sizes"]
                sizes[len(batch)] = sizes.get(len(batch), 0) + 1
                request.feature = hidden[row]
                request.ids.append(step.token_id)
                if request.accept(step, self.engine.eos_token_ids) or request.cancelled:
                    done.append(request)
        if done:
            batch.remove(done)
            for request in done:
                request.finish()

    def _speculative_step(self, request: Request) -> list[Request]:
        """Draft, verify and accept several tokens of the one running request (no padding then)."""
        if request.speculation is None:
            request.speculation = SpeculativeSession(self.engine, self.speculative, request.prompt_ids, request.stats)
            request.stats["method"] = f"batched+{self.speculative.method}"
        batch = self._batch
        room = min(request.budget - len(request.token_ids) - 1, self.engine.context_length - len(request.ids) - 1)
        ended = False

        def choose(_ids: list[int], logits) -> TokenStep:
            nonlocal ended
            if ended:  # the request ended earlier in this step; -1 never equals a drafted token
                return TokenStep(-1, 0.0)
            step = self._decide([request], logits[None].clone())[0]
            ended = request.accept(step, self.engine.eos_token_ids)
            return step

        _kept, request.feature = request.speculation.step(
            request.ids, request.feature, max(0, room),
            verify=lambda tokens: self.engine.forward(tokens, batch.cache, all_logits=True),
            crop=batch.crop, choose=choose)
        return [request] if ended or request.cancelled else []

    def _decide(self, requests: list[Request], logits) -> list[TokenStep]:
        """Row i's next token for requests[i] from ``logits`` (rows x vocab, masked in place by each
        constrained request's grammar): greedy or sampled, with its log-probability."""
        import torch

        self._apply_grammars(requests, logits)
        logprobs = torch.log_softmax(logits, dim=-1)
        best = logits.argmax(dim=-1).tolist()
        steps = []
        for row, request in enumerate(requests):
            token = best[row] if request.options.temperature == 0.0 else self._sample(request, logits[row])
            steps.append(TokenStep(token, float(logprobs[row, token])))
        return steps

    def _apply_grammars(self, requests: list[Request], logits) -> None:
        """Each constrained row's bitmask from its own matcher, applied to ``logits`` in place."""
        constrained = [row for row, r in enumerate(requests) if r.matcher is not None]
        if not constrained:
            return
        import xgrammar

        if self._bitmask is None:
            self._bitmask = xgrammar.allocate_token_bitmask(self.max_batch_size, logits.shape[-1])
        for row in constrained:
            requests[row].matcher.fill_next_token_bitmask(self._bitmask, row)
        xgrammar.apply_token_bitmask_inplace(logits, self._bitmask[: len(requests)], indices=constrained)

    @staticmethod
    def _sample(request: Request, logits) -> int:
        import torch

        if request.generator is None:
            request.generator = torch.Generator()
            if request.seed is not None:
                request.generator.manual_seed(request.seed)
            else:
                request.generator.seed()
        probs = torch.softmax(logits / request.options.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=request.generator))


def _packing(prompts: list[list[int]], share_prefixes: bool = True):
    """One packed row for ``prompts``: (input ids [1, T], position ids [1, T], attention mask
    [1, 1, T, T] or None for a single prompt, and per prompt the packed index of each of its
    positions). A prompt reuses the positions of the longest prefix it shares with an earlier
    prompt (at least its last token is its own: its logits are needed), if ``share_prefixes``."""
    import torch

    tokens: list[int] = []
    token_positions: list[int] = []
    sources: list[list[int]] = []
    shares: list[int] = []
    for prompt in prompts:
        shared, donor = 0, []
        for earlier, indices in zip(prompts, sources if share_prefixes else []):
            common = _common_prefix(prompt, earlier, limit=len(prompt) - 1)
            if common > shared:
                shared, donor = common, indices
        sources.append(donor[:shared] + list(range(len(tokens), len(tokens) + len(prompt) - shared)))
        shares.append(shared)
        tokens.extend(prompt[shared:])
        token_positions.extend(range(shared, len(prompt)))
    ids = torch.tensor([tokens], dtype=torch.long)
    positions = torch.tensor([token_positions], dtype=torch.long)
    if len(prompts) == 1:
        return ids, positions, None, sources
    mask = torch.zeros(len(tokens), len(tokens), dtype=torch.bool)
    for prompt, indices, shared in zip(prompts, sources, shares):
        own, every = torch.tensor(indices[shared:]), torch.tensor(indices)
        mask[own[:, None], every[None, :]] = torch.arange(len(prompt))[None, :] <= torch.arange(shared, len(prompt))[:, None]
    return ids, positions, mask[None, None], sources


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def _prefill_group(pending: list[Request]) -> list[Request]:
    """The first pending requests whose prompts fit one packed prefill (always at least one)."""
    total = 0
    for count, request in enumerate(pending):
        total += len(request.prompt_ids)
        if count and total > PREFILL_TOKENS:
            return pending[:count]
    return list(pending)


class _AsyncPieces:
    """``async for piece in engine.stream(...)``: submits on first iteration, cancels if abandoned."""

    def __init__(self, engine: BatchingEngine, prompt, options, priority, seed, speculative, fields):
        self._args = (engine, prompt, options, priority, seed, speculative, fields)
        self.request: Request | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        engine, prompt, options, priority, seed, speculative, fields = self._args
        request = engine._request(prompt, options, priority, seed, speculative, fields)
        pieces: asyncio.Queue = asyncio.Queue()
        request._async = (asyncio.get_running_loop(), pieces)
        with engine._wake:
            if engine._stopped:
                raise RuntimeError("the engine is closed")
            engine._waiting.push(request)
            engine._wake.notify()
        self.request = request
        try:
            while (piece := await pieces.get()) is not None:
                yield piece
        finally:
            if not request._done.is_set():
                request.cancel()
        if request._error is not None:
            raise request._error


def _options(options: Any, fields: dict) -> GenerationOptions:
    """One GenerationOptions from the model, a dict of its fields, or keyword fields."""
    if options is not None and fields:
        raise LLMRequestError(f"{next(iter(fields))}: give the generation options either as options or as keywords")
    if isinstance(options, GenerationOptions):
        return options
    try:
        return GenerationOptions.model_validate(options if options is not None else fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "options"
        raise LLMRequestError(f"{where}: {first['msg']}") from None
