"""A small draft head trained on the target's own hidden states and outputs (EAGLE-style).

The head reads the target's last hidden state at position t (after the final norm, what the LM
head reads) and the embedding of the token chosen there, and predicts the hidden state at t+1;
the target's own (tied) LM head, restricted to a vocabulary subset, turns that into the next
token. Fed its own prediction, it drafts several tokens, one small MLP step each.

Training is self-distillation: the target writes greedy answers to ``training_prompts()``
(disjoint from the benchmark's prompts); the head learns, unrolled over ``UNROLL`` steps on its
own predictions, to reproduce the target's hidden states and greedy tokens. Deterministic and
a few minutes on 2 CPU cores; the result is cached under ``~/.cache/tessera/draft_heads``.
The output layer is the target's embedding matrix, so the file holds only the MLP (fp16) and the
vocabulary subset; a request's own prompt tokens join the subset (SQL copies schema names).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tessera.workers.llm.engine import LLMEngine

SHIPPED_DIR = Path(__file__).resolve().parent / "data"
CACHE_DIR = Path(os.environ.get("TESSERA_CACHE_DIR", Path.home() / ".cache" / "tessera")) / "draft_heads"


@dataclass(frozen=True)
class DraftHeadTraining:
    """Everything that decides the trained head; its hash names the cached file."""

    max_new_tokens: int = 96  # length of each self-generated answer
    batch_size: int = 28  # prompts generated together
    inner_size: int = 1024  # width of the head's MLP
    vocab_size: int = 8192  # most frequent generated tokens the head can draft (plus the prompt's)
    unroll: int = 3  # training steps fed on the head's own predictions
    epochs: int = 6
    learning_rate: float = 2e-3
    seed: int = 0

    def digest(self, model_name: str) -> str:
        text = repr((model_name, sorted(asdict(self).items()), _prompts_fingerprint()))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _prompts_fingerprint() -> str:
    from tessera.workers.llm.prompts import training_prompts

    return hashlib.sha256(repr(training_prompts()).encode()).hexdigest()[:12]


def _head_module(hidden: int, inner: int):
    import torch.nn as nn

    class DraftHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fuse = nn.Linear(2 * hidden, hidden)
            self.norm = nn.RMSNorm(hidden, eps=1e-5)
            self.up = nn.Linear(hidden, inner)
            self.down = nn.Linear(inner, hidden)
            self.out_norm = nn.RMSNorm(hidden, eps=1e-5)

        def forward(self, feature, token_embedding):
            import torch

            h = self.fuse(torch.cat([feature, token_embedding], dim=-1))
            h = h + self.down(nn.functional.silu(self.up(self.norm(h))))
            return self.out_norm(h)  # the predicted next hidden state, in the space the LM head reads

    return DraftHead()


# ---------------------------------------------------------------------------- drafting
class DraftHeadDrafter:
    def __init__(self, engine: "LLMEngine", head, vocab):
        self.engine = engine
        self.head = head.eval()
        self.vocab = vocab  # LongTensor of token ids the head drafts from
        self.embedding = engine.model.get_input_embeddings().weight
        self.out_weight = engine.model.lm_head.weight.detach()[vocab].contiguous()

    def start(self, prompt_ids: list[int]) -> "DraftHeadSession":
        import torch

        known = set(self.vocab.tolist())
        extra = torch.tensor(sorted(set(prompt_ids) - known), dtype=torch.long)
        return DraftHeadSession(self, extra)


class DraftHeadSession:
    def __init__(self, drafter: DraftHeadDrafter, extra_vocab):
        import torch

        self.drafter = drafter
        self.vocab = torch.cat([drafter.vocab, extra_vocab])
        extra_rows = drafter.engine.model.lm_head.weight.detach()[extra_vocab]
        self.out_weight = torch.cat([drafter.out_weight, extra_rows]) if len(extra_vocab) else drafter.out_weight

    def propose(self, ids: list[int], feature, k: int, threshold: float) -> list[int]:
        import torch

        head, embedding = self.drafter.head, self.drafter.embedding
        proposal: list[int] = []
        token = ids[-1]
        with torch.inference_mode():
            for _ in range(k):
                feature = head(feature, embedding[token])
                probs = torch.softmax(self.out_weight @ feature, dim=-1)
                top_p, index = torch.max(probs, dim=-1)
                if float(top_p) < threshold:
                    break
                token = int(self.vocab[index])
                proposal.append(token)
        return proposal

    def close(self) -> None:
        pass


_load_lock = threading.Lock()


def load_draft_head(engine: "LLMEngine", path: str | None = None) -> DraftHeadDrafter:
    """The head at ``path``, or the one shipped/cached for this model, trained now if missing."""
    import torch

    with _load_lock:
        if path is None:
            training = DraftHeadTraining()
            name = f"{_model_key(engine)}-{training.digest(_model_key(engine))}.pt"
            shipped, cached = SHIPPED_DIR / name, CACHE_DIR / name
            path_found = shipped if shipped.exists() else cached
            if not path_found.exists():
                train_draft_head(engine, training, cached)
        else:
            path_found = Path(path)
            if not path_found.exists():
                raise FileNotFoundError(f"draft_head_path: {path} does not exist")
        saved = torch.load(path_found, map_location="cpu", weights_only=True)
        hidden = engine.model.config.hidden_size
        if saved["hidden_size"] != hidden:
            raise ValueError(f"draft_head_path: the head was trained for hidden size {saved['hidden_size']}, "
                             f"this model has {hidden}")
        head = _head_module(hidden, saved["inner_size"])
        head.load_state_dict({k: v.float() for k, v in saved["state"].items()})
        return DraftHeadDrafter(engine, head.to(engine.device), saved["vocab"].long())


def _model_key(engine: "LLMEngine") -> str:
    config = engine.model.config
    return f"{engine.name}-h{config.hidden_size}-l{config.num_hidden_layers}-v{config.vocab_size}"


# ---------------------------------------------------------------------------- training
def self_generate(engine: "LLMEngine", training: DraftHeadTraining):
    """Greedy answers of the target to the training prompts, with its hidden state at every step.

    Returns (features [rows, T, hidden], tokens [rows, T], lengths [rows]): ``tokens[r, i]`` is the
    target's greedy choice at the position whose last hidden state is ``features[r, i]``.
    """
    import torch
    from tqdm import tqdm

    from tessera.workers.llm.prompts import training_prompts

    model, tokenizer = engine.model, engine.tokenizer
    prompts = [engine.encode(engine.chat_prompt(m)) for m in training_prompts()]
    steps = training.max_new_tokens
    features = torch.zeros(len(prompts), steps, model.config.hidden_size)
    tokens = torch.zeros(len(prompts), steps, dtype=torch.long)
    lengths = torch.zeros(len(prompts), dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = range(0, len(prompts), training.batch_size)
    with torch.inference_mode(), tqdm(total=len(prompts) * steps, desc="draft head: self-generating",
                                      unit="tok", file=sys.stderr) as bar:
        for start in batches:
            rows = prompts[start : start + training.batch_size]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = engine.new_cache()
            alive = torch.ones(len(rows), dtype=torch.bool)
            for step in range(steps):
                hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                     past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
                chosen = model.lm_head(hidden).argmax(-1)
                sel = slice(start, start + len(rows))
                features[sel, step], tokens[sel, step] = hidden, chosen
                lengths[sel] += alive.long()
                alive &= ~torch.isin(chosen, torch.tensor(sorted(engine.eos_token_ids)))
                ids = chosen[:, None]
                mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
                positions = positions[:, -1:] + 1
                bar.update(len(rows))
                if not alive.any():
                    bar.update(len(rows) * (steps - step - 1))
                    break
    return features, tokens, lengths


def train_draft_head(engine: "LLMEngine", training: DraftHeadTraining, out: Path) -> Path:
    """Self-distil a draft head for ``engine``'s model and save it to ``out``."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(training.seed)
    started = time.perf_counter()
    features, tokens, lengths = self_generate(engine, training)
    generated_seconds = time.perf_counter() - started

    counts = torch.bincount(tokens[torch.arange(tokens.shape[1]) < lengths[:, None]],
                            minlength=engine.model.config.vocab_size)
    vocab = torch.argsort(counts, descending=True, stable=True)[: training.vocab_size]
    vocab = vocab[counts[vocab] > 0].sort().values
    to_index = torch.full((engine.model.config.vocab_size,), -100, dtype=torch.long)
    to_index[vocab] = torch.arange(len(vocab))

    hidden = engine.model.config.hidden_size
    head = _head_module(hidden, training.inner_size)
    embedding = engine.model.get_input_embeddings().weight.detach()
    out_weight = engine.model.lm_head.weight.detach()[vocab]
    unroll = training.unroll
    # Training samples: (row, i) with the chosen tokens i .. i+unroll inside the answer.
    rows, starts = torch.nonzero(torch.arange(tokens.shape[1])[None, :] + unroll < lengths[:, None], as_tuple=True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=training.learning_rate, weight_decay=0.0)
    batch = 256
    total_steps = training.epochs * ((len(rows) + batch - 1) // batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, training.learning_rate, total_steps=total_steps)
    generator = torch.Generator().manual_seed(training.seed)
    with tqdm(total=total_steps, desc="draft head: training", file=sys.stderr) as bar:
        for _epoch in range(training.epochs):
            order = torch.randperm(len(rows), generator=generator)
            for chunk in order.split(batch):
                r, i = rows[chunk], starts[chunk]
                feature = features[r, i]
                loss = 0.0
                for j in range(1, unroll + 1):
                    feature = head(feature, embedding[tokens[r, i + j - 1]])
                    logits = feature @ out_weight.T
                    loss = loss + torch.nn.functional.cross_entropy(logits, to_index[tokens[r, i + j]], ignore_index=-100)
                    loss = loss + torch.nn.functional.smooth_l1_loss(feature, features[r, i + j])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss) / unroll:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half() for k, v in head.state_dict().items()}
    torch.save({"state": state, "vocab": vocab.int(), "hidden_size": hidden, "inner_size": training.inner_size,
                "training": asdict(training), "samples": len(rows),
                "generate_seconds": generated_seconds, "total_seconds": time.perf_counter() - started},
               out.with_suffix(".tmp"))
    out.with_suffix(".tmp").replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Train the default head for SmolLM2 and write it next to this module (the shipped file)."""
    import argparse

    parser = argparse.ArgumentParser(description="Train the SmolLM2 draft head and write the file Tessera ships.")
    parser.add_argument("--out-dir", type=Path, default=SHIPPED_DIR, help="where to write the head file")
    args = parser.parse_args(argv)
    from tessera.workers.llm.engine import LLMEngine

    engine = LLMEngine.load_default()
    training = DraftHeadTraining()
    key = _model_key(engine)
    path = train_draft_head(engine, training, args.out_dir / f"{key}-{training.digest(key)}.pt")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
