"""``tessera bench engine``: the batching engine against today's one-at-a-time engine, same process, same prompts.

- tokensPerSecond: aggregate generated tokens per second with 1, 4, 8 and 16 requests in flight;
  baseline: ``LLMEngine.generate`` called from that many threads (one forward at a time, under a lock).
- grammarOverhead: seconds per token with a JSON schema against the same requests unconstrained.
- speculativeSpeedup: one request at a time, with and without the speculative step; outputs must be identical.
- demoRssMB: resident memory of real processes: today two stage processes each loading the model,
  against one process holding one shared batching engine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from typing import Any

LEVELS = (1, 4, 8, 16)
PERSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                                  "city": {"type": "string", "maxLength": 16}},
                 "required": ["name", "city"], "additionalProperties": False}


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=_positive, default=32, help="tokens per request (default 32)")
    parser.add_argument("--spec-prompts", type=_positive, default=6,
                        help="prompts decoded single-stream for the speculative speedup (default 6)")
    parser.add_argument("--threads", type=_positive, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--skip-rss", action="store_true", help="do not start the processes that measure demoRssMB")


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


def _batched(batching, prompts: list[str], **options) -> tuple[list, float]:
    async def all_of():
        return await asyncio.gather(*[batching.generate(p, **options) for p in prompts])

    started = time.perf_counter()
    results = asyncio.run(all_of())
    return results, time.perf_counter() - started


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

    from tessera.workers.llm.batching import BatchingEngine
    from tessera.workers.llm.engine import LLMEngine
    from tessera.workers.llm.specdec import SpecDecConfig

    load_before = os.getloadavg()[0]
    engine = LLMEngine.load_default(threads=args.threads)
    batching = BatchingEngine(engine, max_batch_size=max(LEVELS))
    n = args.max_tokens
    new, baseline = {}, {}
    with tqdm(total=2 * len(LEVELS) + 3, desc="engine bench", file=sys.stderr) as bar:
        for level in LEVELS:
            prompts = _prompts(engine, level)
            results, seconds = _batched(batching, prompts, max_tokens=n, speculative=False)
            new[str(level)] = round(sum(len(r.token_ids) for r in results) / seconds, 2)
            bar.update(1)
            baseline[str(level)] = round(_baseline_rate(engine, prompts, n), 2)
            bar.update(1)

        prompts = _prompts(engine, 4)
        free, free_s = _batched(batching, prompts, max_tokens=n, speculative=False)
        bar.update(1)
        constrained, constrained_s = _batched(batching, prompts, max_tokens=n, json_schema=PERSON_SCHEMA,
                                              speculative=False)
        bar.update(1)
        per_token_free = free_s / sum(len(r.token_ids) for r in free)
        per_token_grammar = constrained_s / max(1, sum(len(r.token_ids) for r in constrained))

        speculative = BatchingEngine(engine, max_batch_size=1, speculative=SpecDecConfig(method="draft_head_ngram"))
        plain_s = spec_s = 0.0
        identical = True
        spec_stats = {"drafted": 0, "accepted": 0}
        for prompt in _prompts(engine, args.spec_prompts):
            plain = batching.submit(prompt, max_tokens=2 * n, speculative=False).result()
            spec = speculative.submit(prompt, max_tokens=2 * n).result()
            plain_s, spec_s = plain_s + plain.seconds, spec_s + spec.seconds
            identical &= plain.token_ids == spec.token_ids
            spec_stats["drafted"] += spec.stats.get("drafted_tokens", 0)
            spec_stats["accepted"] += spec.stats.get("accepted_tokens", 0)
        speculative.close()
        bar.update(1)
    batching.close()
    rss = None if args.skip_rss else {"baseline": _rss_mb(STAGE_TODAY, 2), "new": _rss_mb(SHARED_NEW, 1)}
    return {
        "benchmark": "engine",
        "model": engine.name,
        "threads": args.threads,
        "maxTokens": n,
        "baseline": "LLMEngine.generate from as many threads as requests (one forward at a time), same prompts",
        "tokensPerSecond": {"new": new, "baseline": baseline},
        "throughputRatioAt8": round(new["8"] / baseline["8"], 2),
        "grammarOverhead": round(per_token_grammar / per_token_free - 1.0, 3),
        "grammarJsonParses": all(_parses(r.text) for r in constrained),
        "speculativeSpeedup": round(plain_s / spec_s, 3),
        "speculativeIdenticalOutputs": identical,
        "speculativeAcceptanceRate": round(spec_stats["accepted"] / max(1, spec_stats["drafted"]), 3),
        "demoRssMB": rss,
        "loadAverage": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()},
    }


def _parses(text: str) -> bool:
    import json

    try:
        json.loads(text)
        return True
    except ValueError:
        return False
