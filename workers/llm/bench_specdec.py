"""``tessera bench specdec``: speculative decoding against plain greedy decoding, same process, same prompts.

Prompt by prompt, the plain greedy answer is decoded first (the baseline) and then each draft
method decodes the same prompt; a method's output must equal the baseline token for token.
Running the methods interleaved this way lets background load drift hit every method alike.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from tessera.api.common import positive_int

METHODS = ("ngram", "layer_skip", "quantized", "draft_head", "draft_head_ngram", "draft_model")


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=positive_int, default=32,
                        help="how many of the 32 held-out prompts (20 Text-to-SQL, 12 chat) to use, "
                             "SQL and chat alternating (default 32)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=96, help="tokens generated per prompt (default 96)")
    parser.add_argument("--methods", type=_methods, default=list(METHODS),
                        help=f"comma-separated draft methods (default: all of {', '.join(METHODS)})")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--draft-model", default=None,
                        help="draft_model: a local HF directory or .gguf (default: a second, separate copy of "
                             "the target, the only model on this machine)")


def _selected(args: argparse.Namespace) -> list[dict]:
    from tessera.workers.llm.prompts import benchmark_prompts

    prompts = benchmark_prompts()
    sql = [p for p in prompts if p["kind"] == "sql"]
    chat = [p for p in prompts if p["kind"] == "chat"]
    mixed = [p for pair in zip(sql, chat) for p in pair] + sql[len(chat):]
    return mixed[: args.prompts]


def _configs(args: argparse.Namespace) -> dict[str, Any]:
    from tessera.workers.llm.engine import default_gguf_path
    from tessera.workers.llm.specdec import SpecDecConfig

    draft_model = args.draft_model or str(default_gguf_path())
    return {m: SpecDecConfig(method=m, draft_model_path=draft_model if m == "draft_model" else None)
            for m in args.methods}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from tessera.workers.llm.engine import LLMEngine

    prompts = _selected(args)
    configs = _configs(args)
    load_before = os.getloadavg()[0]
    engine = LLMEngine.load_default(threads=args.threads)
    texts = [engine.chat_prompt(p["messages"]) for p in prompts]

    # Build every draft (and train the draft head if it is not cached) before anything is timed.
    for config in tqdm(configs.values(), desc="specdec: preparing drafts", file=sys.stderr):
        engine.generate(texts[0], max_new_tokens=4, speculative=config)
    engine.generate(texts[0], max_new_tokens=4)

    totals = {m: {"seconds": 0.0, "tokens": 0, "decoded": 0, "drafted": 0, "accepted": 0, "steps": 0, "identical": 0,
                  "draft_seconds": 0.0, "verify_seconds": 0.0, "kind_seconds": {"sql": 0.0, "chat": 0.0}}
              for m in ["plain", *configs]}
    with tqdm(total=len(prompts) * (1 + len(configs)), desc="specdec: decoding", file=sys.stderr) as bar:
        for prompt, text in zip(prompts, texts):
            baseline = engine.generate(text, max_new_tokens=args.max_new_tokens)
            _add(totals["plain"], baseline, prompt["kind"], identical=True)
            bar.update(1)
            for method, config in configs.items():
                result = engine.generate(text, max_new_tokens=args.max_new_tokens, speculative=config)
                _add(totals[method], result, prompt["kind"], identical=result.token_ids == baseline.token_ids)
                bar.update(1)

    plain = totals["plain"]
    baseline_rate = plain["tokens"] / plain["seconds"]
    entries = []
    for method in configs:
        t = totals[method]
        rate = t["tokens"] / t["seconds"]
        entries.append({
            "method": method,
            "baselineTokensPerS": round(baseline_rate, 2),
            "speculativeTokensPerS": round(rate, 2),
            "speedup": round(rate / baseline_rate, 3),
            "acceptanceRate": round(t["accepted"] / t["drafted"], 3) if t["drafted"] else 0.0,
            "meanTokensPerStep": round(t["decoded"] / t["steps"], 3),
            "identicalOutputs": t["identical"] == len(prompts),
            "identicalPrompts": f"{t['identical']}/{len(prompts)}",
            "speedupSql": _kind_speedup(plain, t, "sql"),
            "speedupChat": _kind_speedup(plain, t, "chat"),
            "draftSeconds": round(t["draft_seconds"], 2),
            "verifySeconds": round(t["verify_seconds"], 2),
        })
    best = max(entries, key=lambda e: e["speedup"])
    return {
        "benchmark": "specdec",
        "model": engine.name,
        "device": engine.device,
        "threads": args.threads,
        "baseline": "plain greedy decoding by the same engine, same process, same prompts",
        "prompts": {"sql": sum(p["kind"] == "sql" for p in prompts), "chat": sum(p["kind"] == "chat" for p in prompts)},
        "maxNewTokens": args.max_new_tokens,
        "generatedTokens": plain["tokens"],
        "loadAverage": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()},
        "methods": entries,
        "best": {"method": best["method"], "speedup": best["speedup"], "identicalOutputs": best["identicalOutputs"]},
    }


def _add(total: dict, result, kind: str, identical: bool) -> None:
    stats = result.stats
    total["seconds"] += result.seconds
    total["kind_seconds"][kind] += result.seconds
    total["tokens"] += len(result.token_ids)
    total["decoded"] += stats["decoded_tokens"]
    total["steps"] += stats["target_steps"]
    total["drafted"] += stats.get("drafted_tokens", 0)
    total["accepted"] += stats.get("accepted_tokens", 0)
    total["draft_seconds"] += stats.get("draft_seconds", 0.0)
    total["verify_seconds"] += stats.get("verify_seconds", 0.0)
    total["identical"] += identical


def _kind_speedup(plain: dict, method: dict, kind: str) -> float | None:
    # Same prompts, same token counts (when outputs are identical): the time ratio is the speedup.
    if method["kind_seconds"][kind] == 0.0:
        return None
    return round(plain["kind_seconds"][kind] / method["kind_seconds"][kind], 3)
