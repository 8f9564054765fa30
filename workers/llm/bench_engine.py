"""``tessera bench engine``: the batching engine against today's one-at-a-time engine, same process, same prompts.

- tokensPerSecond: aggregate generated tokens per second with 1, 4, 8 and 16 requests in flight;
  baseline: ``LLMEngine.generate`` called from that many threads (one forward at a time, under a lock).
  baselineSequentialTokensPerSecondAt8: the same 8 requests one after another from one thread, the
  one-at-a-time engine's best case (its threads' OpenMP workers no longer compete).
- grammarOverhead: decode-phase seconds per token with a JSON schema against the same requests
  unconstrained, at the same batch size and decoded tokens per request (``_grammar_overhead``).
- speculativeSpeedup: one request at a time, with and without the speculative step; outputs must be identical.
- cpuLinear: the layout of the CPU linear layers the engine adopted (``cpu_matmul``) and one forward's
  milliseconds by new tokens in each layout.
- demoRssMB: resident memory of real processes: today two stage processes each loading the model,
  against one process holding one shared batching engine.

Every measurement runs with no other thread alive that has computed with torch: each such thread keeps
its own OpenMP workers, and with more of them than cores libgomp stops spinning at its barriers, which
doubled a forward's time here (docs/engine.md, "CPU matrix products"). So each engine is closed after
its measurement and the single-thread ones run in a thread of their own. The threaded baseline keeps
its threads alive together, as a threaded server does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from tessera.api.common import positive_int
from tessera.workers.torch_thread import run_in_passing_thread

LEVELS = (1, 4, 8, 16)
FORWARD_ROWS = (1, 2, 3, 4, 5, 8, 12, 16)
PERSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                                  "city": {"type": "string", "maxLength": 16}},
                 "required": ["name", "city"], "additionalProperties": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=positive_int, default=32, help="tokens per request (default 32)")
    parser.add_argument("--spec-prompts", type=positive_int, default=6,
                        help="prompts decoded single-stream for the speculative speedup (default 6)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--skip-rss", action="store_true", help="do not start the processes that measure demoRssMB")
    parser.add_argument("--skip-speculative", action="store_true",
                        help="do not measure the speculative speedup (its draft head may have to be trained first)")
    parser.add_argument("--skip-candidates", action="store_true",
                        help="do not measure the library candidates (transformers' continuous batching, llama.cpp)")


def _prompts(engine, count: int) -> list[str]:
    from tessera.workers.llm.prompts import benchmark_prompts

    prompts = [engine.chat_prompt(p["messages"]) for p in benchmark_prompts()]
    return [prompts[i % len(prompts)] for i in range(count)]


def _baseline_rate(engine, prompts: list[str], max_tokens: int) -> float:
    results = []

    def one(prompt: str) -> None:
        results.append(engine.generate(prompt, max_new_tokens=max_tokens))

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(len(r.token_ids) for r in results) / (time.perf_counter() - started)


@contextlib.contextmanager
def _batching(engine, **options):
    """A batching engine for one measurement, closed after it: its scheduler thread (and so its OpenMP
    workers) must not outlive it (see the module docstring)."""
    from tessera.workers.llm.batching import BatchingEngine

    with contextlib.closing(BatchingEngine(engine, max_batch_size=max(LEVELS), **options)) as batching:
        yield batching


def _sequential_rate(engine, prompts: list[str], max_tokens: int) -> float:
    """The one-at-a-time engine at its best: the same requests one after another from one thread (no
    waiting threads, whose OpenMP workers compete for the cores)."""
    started = time.perf_counter()
    tokens = sum(len(engine.generate(p, max_new_tokens=max_tokens).token_ids) for p in prompts)
    return tokens / (time.perf_counter() - started)


def _forward_costs(engine, repeats: int = 9) -> dict[str, Any]:
    """Milliseconds of one target forward by new tokens (after a benchmark prompt), with the linear layers
    in each CPU layout (``cpu_matmul``; median of ``repeats``, layouts interleaved), and the one the engine
    uses."""
    from tessera.workers.llm import cpu_matmul
    from tessera.workers.llm.steps import crop_cache

    adopted = cpu_matmul.model_layout(engine.model)
    prompt = engine.encode(_prompts(engine, 1)[0])
    costs: dict[str, dict[str, float]] = {"torch-linear": {}, "weight-first": {}}

    cache = engine.new_cache()
    engine.forward(prompt, cache)
    for rows in FORWARD_ROWS:
        for layout, by_rows in costs.items():
            cpu_matmul.adopt_layout(engine.model, layout)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                engine.forward(prompt[:rows], cache, all_logits=True)
                times.append(time.perf_counter() - started)
                crop_cache(cache, len(prompt))
            by_rows[str(rows)] = round(statistics.median(times) * 1e3, 1)
    cpu_matmul.adopt_layout(engine.model, adopted)
    return {"adopted": adopted, "forwardMsByNewTokens": costs}


def _batched(batching, prompts: list[str], max_tokens: int | list[int], **options) -> tuple[list, float]:
    """All ``prompts`` at once (``max_tokens`` for each, or one count per prompt); (results, seconds)."""
    counts = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)

    async def all_of():
        return await asyncio.gather(*[batching.generate(p, max_tokens=n, **options) for p, n in zip(prompts, counts)])

    started = time.perf_counter()
    results = asyncio.run(all_of())
    return results, time.perf_counter() - started


def _grammar_overhead(batching, prompts: list[str], rounds: int = 2) -> dict[str, Any]:
    """Decode-phase seconds per token, JSON schema against unconstrained, at the same batch size and
    the same decoded tokens per request: each unconstrained request gets the number of tokens its
    constrained twin decoded (the grammar ends answers early; with free lengths the prefill would
    be shared over fewer tokens). The first token is left out of both: it comes with the prefill.
    Constrained and free runs alternate ``rounds`` times, so load from elsewhere hits both alike."""
    seconds = {"grammar": 0.0, "free": 0.0}
    tokens = {"grammar": 0, "free": 0}
    parses = True
    for _ in range(rounds):
        constrained, _s = _batched(batching, prompts, max_tokens=64, json_schema=PERSON_SCHEMA, speculative=False)
        parses &= all(_parses(r.text) for r in constrained)
        lengths = [r.stats["decoded_tokens"] for r in constrained]
        free, _s = _batched(batching, prompts, lengths, speculative=False)
        for kind, results in (("grammar", constrained), ("free", free)):
            seconds[kind] += sum(r.seconds - r.first_token_seconds for r in results)
            tokens[kind] += sum(r.stats["decoded_tokens"] - 1 for r in results)
    per_token = {kind: seconds[kind] / max(1, tokens[kind]) for kind in seconds}
    return {"overhead": round(per_token["grammar"] / per_token["free"] - 1.0, 3), "parses": parses,
            "secondsPerToken": {kind: round(value, 4) for kind, value in per_token.items()},
            "decodedTokens": tokens}


def _prefill_tokens(engine, prompts: list[str]) -> dict[str, int]:
    """Prompt tokens of requests prefilled together, and how many the packed prefill computes once
    the prefixes they share are computed once (``batching._packing``)."""
    from tessera.workers.llm.batching import _packing

    ids = [engine.encode(p) for p in prompts]
    return {"prompt": sum(map(len, ids)), "computed": int(_packing(ids)[0].shape[1])}


def _speculative(engine, count: int, max_tokens: int) -> dict[str, Any]:
    """One request at a time, ``2 * max_tokens`` each: the speculative step against plain decoding, each on a
    single-slot engine (no admission window for either) that runs alone."""
    from tessera.workers.llm.batching import BatchingEngine
    from tessera.workers.llm.specdec import SpecDecConfig

    prompts = _prompts(engine, count)
    runs = {}
    for name, speculative in (("plain", None), ("speculative", SpecDecConfig(method="draft_head_ngram"))):
        with contextlib.closing(BatchingEngine(engine, max_batch_size=1, speculative=speculative)) as single:
            runs[name] = [single.submit(prompt, max_tokens=2 * max_tokens).result() for prompt in prompts]
    plain, spec = runs["plain"], runs["speculative"]
    drafted = sum(r.stats.get("drafted_tokens", 0) for r in spec)
    accepted = sum(r.stats.get("accepted_tokens", 0) for r in spec)
    return {"speculativeSpeedup": round(sum(r.seconds for r in plain) / sum(r.seconds for r in spec), 3),
            "speculativeIdenticalOutputs": all(p.token_ids == q.token_ids for p, q in zip(plain, spec)),
            "speculativeAcceptanceRate": round(accepted / max(1, drafted), 3)}


def _candidates(engine, prompts: list[str], max_tokens: int, threads: int, ours: list) -> dict[str, Any]:
    """The library candidates on the same prompts, all submitted at once, greedy: tokens/s and how
    many answers equal ours token for token. llama.cpp only when llama-cpp-python is importable
    (it is no dependency of Tessera)."""
    import importlib.util

    ids = [engine.encode(p) for p in prompts]
    found = {"transformersContinuousBatching": _transformers_continuous_batching(engine, ids, max_tokens)}
    if importlib.util.find_spec("llama_cpp") is not None:
        found["llamaCpp"] = _llama_cpp(engine, ids, max_tokens, threads)
    for figures in found.values():
        answers = figures.pop("answers", None)
        if answers is not None:
            figures["sameTokensAsOurs"] = sum(a == r.token_ids for a, r in zip(answers, ours))
            figures["requests"] = len(ours)
    return found


def _transformers_continuous_batching(engine, ids: list[list[int]], max_tokens: int) -> dict[str, Any]:
    """``model.generate_batch`` (transformers' continuous batching, paged KV cache) on the same model."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=sorted(engine.eos_token_ids),
                              pad_token_id=engine.tokenizer.pad_token_id or 0)
    try:
        started = time.perf_counter()
        outputs = engine.model.generate_batch(inputs=ids, generation_config=config, progress_bar=False)
        seconds = time.perf_counter() - started
    except Exception as error:  # reported in the JSON: the candidate's own failure on this machine
        return {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"}
    ordered = [outputs[key].generated_tokens for key in sorted(outputs, key=lambda k: int(k.rsplit("_", 1)[-1]))]
    answers = [[t for t in tokens if t not in engine.eos_token_ids] for tokens in ordered]
    return {"tokensPerSecond": round(sum(map(len, answers)) / seconds, 2), "answers": answers}


def _llama_cpp(engine, ids: list[list[int]], max_tokens: int, threads: int) -> dict[str, Any]:
    """llama.cpp on the model's own GGUF (quantized weights, its own kernels), greedy; every sequence
    in one ``llama_batch`` per step, as llama.cpp's server batches its parallel slots."""
    import ctypes

    import llama_cpp as L
    import numpy as np

    from tessera.workers.llm.loading import default_gguf_path

    quiet = L.llama_log_callback(lambda _level, _text, _data: None)  # llama.cpp logs every load to stderr
    L.llama_log_set(quiet, ctypes.c_void_p(0))
    L.llama_backend_init()
    model = L.llama_model_load_from_file(str(default_gguf_path()).encode(), L.llama_model_default_params())
    params = L.llama_context_default_params()
    params.n_ctx, params.n_seq_max = 8192, max(LEVELS)
    params.n_batch = params.n_ubatch = sum(map(len, ids))
    params.n_threads = params.n_threads_batch = threads
    context = L.llama_init_from_model(model, params)
    vocab_size = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    batch = L.llama_batch_init(params.n_batch, 0, 1)

    def add(token: int, position: int, sequence: int) -> int:
        i = batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, True
        batch.seq_id[i][0] = sequence
        batch.n_tokens += 1
        return i

    try:
        started = time.perf_counter()
        answers: list[list[int]] = [[] for _ in ids]
        rows = {}
        for sequence, prompt in enumerate(ids):
            for position, token in enumerate(prompt):
                rows[sequence] = add(token, position, sequence)
        while rows:
            if L.llama_decode(context, batch) != 0:
                return {"error": "llama_decode failed"}
            chosen = {s: int(np.ctypeslib.as_array(L.llama_get_logits_ith(context, row), shape=(vocab_size,)).argmax())
                      for s, row in rows.items()}
            batch.n_tokens, rows = 0, {}
            for sequence, token in chosen.items():
                if token in engine.eos_token_ids:
                    continue
                answers[sequence].append(token)
                if len(answers[sequence]) < max_tokens:
                    rows[sequence] = add(token, len(ids[sequence]) + len(answers[sequence]) - 1, sequence)
        seconds = time.perf_counter() - started
    finally:
        L.llama_batch_free(batch)
        L.llama_free(context)
        L.llama_model_free(model)
    return {"tokensPerSecond": round(sum(map(len, answers)) / seconds, 2), "answers": answers,
            "note": "computes with the GGUF's 4-bit weights, not the fp32 weights both Tessera engines use"}


def _rss_mb(script: str, processes: int) -> float:
    """Start ``processes`` Python processes running ``script`` (which prints 'ready'), sum their RSS."""
    procs = [subprocess.Popen([sys.executable, "-P", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(processes)]
    try:
        for proc in procs:
            proc.stdout.readline()
        total = 0
        for proc in procs:
            with open(f"/proc/{proc.pid}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        return round(total / 1024, 1)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


STAGE_TODAY = """
from tessera.workers.llm.engine import LLMEngine
e = LLMEngine.load_default()
e.generate(e.chat_prompt([{"role": "user", "content": "Hi"}]), max_new_tokens=8)
print("ready", flush=True); input()
"""
SHARED_NEW = """
import asyncio
from tessera.workers.llm.batching import BatchingEngine
e = BatchingEngine.load_default()
asyncio.run(e.generate(e.chat_prompt([{"role": "user", "content": "Hi"}]), max_tokens=8))
print("ready", flush=True); input()
"""


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from tessera.workers.llm.engine import LLMEngine

    load_before = os.getloadavg()[0]
    engine = LLMEngine.load_default(threads=args.threads)
    n = args.max_tokens
    with _batching(engine) as batching:
        _batched(batching, _prompts(engine, 2), max_tokens=2, speculative=False)  # first forwards set up kernels
    new, baseline = {}, {}
    with tqdm(total=2 * len(LEVELS) + 6, desc="engine bench", file=sys.stderr) as bar:
        for level in LEVELS:
            prompts = _prompts(engine, level)
            with _batching(engine) as batching:
                results, seconds = _batched(batching, prompts, max_tokens=n, speculative=False)
            new[str(level)] = round(sum(len(r.token_ids) for r in results) / seconds, 2)
            bar.update(1)
            baseline[str(level)] = round(_baseline_rate(engine, prompts, n), 2)
            bar.update(1)

        sequential_8 = run_in_passing_thread(_sequential_rate, engine, _prompts(engine, 8), n)
        bar.update(1)

        with _batching(engine, share_prefixes=False) as unshared:
            results, seconds = _batched(unshared, _prompts(engine, 8), max_tokens=n, speculative=False)
        new_unshared_8 = sum(len(r.token_ids) for r in results) / seconds
        bar.update(1)

        with _batching(engine) as batching:
            grammar = _grammar_overhead(batching, _prompts(engine, 8))
        bar.update(2)

        speculative = None if args.skip_speculative else _speculative(engine, args.spec_prompts, n)
        bar.update(1)

        candidates = None
        if not args.skip_candidates:
            prompts = _prompts(engine, 8)
            with _batching(engine) as batching:
                ours, _seconds = _batched(batching, prompts, max_tokens=n, speculative=False)
            candidates = run_in_passing_thread(_candidates, engine, prompts, n, args.threads, ours)
        bar.update(1)
    cpu_linear = run_in_passing_thread(_forward_costs, engine)
    rss = None if args.skip_rss else {"baseline": _rss_mb(STAGE_TODAY, 2), "new": _rss_mb(SHARED_NEW, 1)}
    return {
        "benchmark": "engine",
        "model": engine.name,
        "threads": args.threads,
        "maxTokens": n,
        "baseline": "LLMEngine.generate from as many threads as requests (one forward at a time), same prompts",
        "tokensPerSecond": {"new": new, "baseline": baseline},
        "throughputRatioAt8": round(new["8"] / baseline["8"], 2),
        "baselineSequentialTokensPerSecondAt8": round(sequential_8, 2),
        "throughputRatioAt8VsSequential": round(new["8"] / sequential_8, 2),
        "throughputRatioAt8WithoutPrefixSharing": round(new_unshared_8 / baseline["8"], 2),
        "prefillTokensAt8": _prefill_tokens(engine, _prompts(engine, 8)),
        "grammarOverhead": grammar["overhead"],
        "grammarDecodeSecondsPerToken": grammar["secondsPerToken"],
        "grammarJsonParses": grammar["parses"],
        **(speculative or {}),
        "demoRssMB": rss,
        "cpuLinear": cpu_linear,
        "candidatesAt8": candidates,
        "loadAverage": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()},
    }


def _parses(text: str) -> bool:
    import json

    try:
        json.loads(text)
        return True
    except ValueError:
        return False
