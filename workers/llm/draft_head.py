"""A small draft head trained on the target's own hidden states and outputs (EAGLE-style).

The head reads the target's last hidden state at position t (after the final norm, what the LM
head reads) and the embedding of the token chosen there, and predicts the hidden state at t+1;
the target's own (tied) LM head, restricted to a vocabulary subset, turns that into the next
token. Fed its own prediction, it drafts several tokens, one small MLP step each.

Training is self-distillation: the target answers ``training_prompts()`` (disjoint from the
benchmark's prompts); the head learns, unrolled over ``unroll`` steps on its own predictions, to
reproduce the target's hidden states and greedy tokens. Deterministic; minutes on one GPU, hours
on 2 CPU cores; a head trained at first use is cached under ``~/.cache/tessera/draft_heads``.
The output layer is the target's embedding matrix, so the file holds only the MLP (fp16) and the
vocabulary subset; a request's own prompt tokens join the subset (SQL copies schema names).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tessera.workers.llm.cpu_matmul import adopt_layout, model_layout, project
from tessera.workers.llm.steps import Target

SHIPPED_DIR = Path(__file__).resolve().parent / "data"
CACHE_DIR = Path(os.environ.get("TESSERA_CACHE_DIR", Path.home() / ".cache" / "tessera")) / "draft_heads"


@dataclass(frozen=True)
class DraftHeadTraining:
    """Everything that decides the trained head; its hash names the cached file."""

    composed_schemas: int = 300  # Text-to-SQL schemas composed for training (training_prompts)
    questions_per_schema: int = 16
    composed_chat: int = 3600  # chat requests drawn from the topic x template bank
    max_new_tokens: int = 192  # length of each self-generated answer
    answers_per_prompt: int = 2  # the greedy answer, then answers sampled at sample_temperature
    sample_temperature: float = 0.7
    batch_size: int = 2048  # answers generated together
    inner_size: int = 1536  # width of the head's MLPs
    blocks: int = 2  # residual MLP blocks
    vocab_size: int = 8192  # most frequent generated tokens the head can draft (plus the prompt's)
    unroll: int = 4  # training steps fed on the head's own predictions
    epochs: int = 6
    train_batch: int = 4096
    learning_rate: float = 2e-3
    seed: int = 0

    def digest(self, model_name: str) -> str:
        text = repr((model_name, sorted(asdict(self).items()), _prompts_fingerprint(self)))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _prompts_fingerprint(training: "DraftHeadTraining") -> str:
    return hashlib.sha256(repr(training_prompts(training)).encode()).hexdigest()[:12]


def training_prompts(training: "DraftHeadTraining") -> list[list[dict]]:
    """The prompts the target answers for training: ``prompts.training_prompts()`` plus
    ``composed_schemas`` Text-to-SQL schemas composed from ``data/draft_head_prompts.json``'s
    entities (``questions_per_schema`` questions each, joins included) and ``composed_chat``
    chat requests over its topics and templates; deterministic (``seed``)."""
    import json
    import random

    from tessera.workers.llm import prompts

    bank = json.loads((SHIPPED_DIR / "draft_head_prompts.json").read_text())
    rng = random.Random(training.seed)
    entities = bank["entities"]
    sql = []
    for _ in range(training.composed_schemas):
        names = rng.sample(sorted(entities), rng.randint(2, 4))
        plural = rng.random() < 0.5
        capitalized = rng.random() < 0.3
        tables = {}  # table -> (singular, key, text columns, numeric columns, all columns)
        for position, name in enumerate(names):
            entity = entities[name]
            text = rng.sample(entity["text"], rng.randint(1, len(entity["text"])))
            numeric = rng.sample(entity["num"], rng.randint(1, len(entity["num"])))
            key = f"{name}_id"
            links = [tables[t][1] for t in list(tables)[:1]] if position else []
            columns = [key, *text, *numeric, *rng.sample(entity["date"], min(1, len(entity["date"]))), *links]
            table = entity["plural"] if plural else name
            if capitalized:
                table, key = table.capitalize(), key.title()
                columns = [c.title() for c in columns]
                text, numeric = [c.title() for c in text], [c.title() for c in numeric]
            tables[table] = (name.replace("_", " "), key, text, numeric, columns)
        schema = prompts.describe_schema({t: v[4] for t, v in tables.items()})
        for _ in range(training.questions_per_schema):
            table, other = rng.sample(list(tables), 2)
            singular, _key, text, numeric, _columns = tables[table]
            template = rng.choice(bank["sql_templates"])
            question = template.format(
                table=table.replace("_", " ").lower(), col=rng.choice(text).lower(), col2=rng.choice(text).lower(),
                num=rng.choice(numeric).lower(), other=other.replace("_", " ").lower(), other_one=tables[other][0],
                other_col=rng.choice(tables[other][2]).lower())
            sql.append(prompts.sql_messages(schema, question))
    chat_pairs = [(topic, t) for topic in bank["chat_topics"] for t in bank["chat_templates"]]
    chat = [prompts.chat_messages(t.format(topic=topic))
            for topic, t in rng.sample(chat_pairs, min(training.composed_chat, len(chat_pairs)))]
    composed = [m for pair in itertools.zip_longest(sql, chat) for m in pair if m is not None]
    return prompts.training_prompts() + composed


def _head_module(hidden: int, inner: int, blocks: int):
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.RMSNorm(hidden, eps=1e-5)
            self.up = nn.Linear(hidden, inner)
            self.down = nn.Linear(inner, hidden)

        def forward(self, h):
            return h + self.down(nn.functional.silu(self.up(self.norm(h))))

    class DraftHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fuse = nn.Linear(2 * hidden, hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(blocks))
            self.out_norm = nn.RMSNorm(hidden, eps=1e-5)

        def forward(self, feature, token_embedding):
            import torch

            h = self.fuse(torch.cat([feature, token_embedding], dim=-1))
            for block in self.blocks:
                h = block(h)
            return self.out_norm(h)  # the predicted next hidden state, in the space the LM head reads

    return DraftHead()


# ---------------------------------------------------------------------------- drafting
class DraftHeadDrafter:
    def __init__(self, engine: Target, head, vocab):
        self.engine = engine
        self.head = head.eval()
        # The target's layout: the head's weights stream through memory like the target's (a timing on
        # the head's own cache-sized weights would not say how they run between target steps).
        self.layout = model_layout(engine.model)
        adopt_layout(self.head, self.layout)
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

        head, embedding, layout = self.drafter.head, self.drafter.embedding, self.drafter.layout
        proposal: list[int] = []
        token = ids[-1]
        reach = 1.0  # the head's own estimate that the target keeps every token drafted so far
        with torch.inference_mode():
            for _ in range(k):
                feature = head(feature, embedding[token])
                top_p, index = torch.max(torch.softmax(project(self.out_weight, feature, layout), dim=-1), dim=-1)
                reach *= float(top_p)
                if reach < threshold:
                    break
                token = int(self.vocab[index])
                proposal.append(token)
        return proposal

    def close(self) -> None:
        pass


_load_lock = threading.Lock()


def load_draft_head(engine: Target, path: str | None = None) -> DraftHeadDrafter:
    """The head at ``path``, or the one shipped/cached for this model, trained now if missing."""
    import torch

    with _load_lock:
        if path is None:
            name = head_file_name(engine, DraftHeadTraining())
            shipped, cached = SHIPPED_DIR / name, CACHE_DIR / name
            path_found = shipped if shipped.exists() else cached
            if not path_found.exists():
                train_draft_head(engine, DraftHeadTraining(), cached)
        else:
            path_found = Path(path)
            if not path_found.exists():
                raise FileNotFoundError(f"draft_head_path: {path} does not exist")
        saved = torch.load(path_found, map_location="cpu", weights_only=True)
        hidden = engine.model.config.hidden_size
        if saved["hidden_size"] != hidden:
            raise ValueError(f"draft_head_path: the head was trained for hidden size {saved['hidden_size']}, "
                             f"this model has {hidden}")
        head = _head_module(hidden, saved["inner_size"], saved["blocks"])
        head.load_state_dict({k: v.float() for k, v in saved["state"].items()})
        return DraftHeadDrafter(engine, head.to(engine.device), saved["vocab"].long())


def head_file_name(engine: Target, training: DraftHeadTraining) -> str:
    """The model's description plus the digest of what decides the head."""
    config = engine.model.config
    key = f"{engine.name}-h{config.hidden_size}-l{config.num_hidden_layers}-v{config.vocab_size}"
    return f"{key}-{training.digest(key)}.pt"


# ---------------------------------------------------------------------------- training
def self_generate(engine: Target, training: DraftHeadTraining):
    """The target's answers to the training prompts, with its hidden state and greedy choice at every step.

    Each prompt gets ``answers_per_prompt`` answers: the greedy one, then sampled ones (more varied
    contexts; the labels stay the target's greedy choices). Returns (features [rows, T, hidden]
    fp16, chosen [rows, T], greedy [rows, T], lengths [rows]) on the engine's device:
    ``features[r, i]`` is the last hidden state at the position where ``greedy[r, i]`` is the
    target's argmax and ``chosen[r, i]`` the token that was appended there.
    """
    import torch
    from tqdm import tqdm

    model, tokenizer, device = engine.model, engine.tokenizer, engine.device
    prompts = [engine.encode(engine.chat_prompt(m)) for m in training_prompts(training)]
    rows_ids = [p for p in prompts for _ in range(training.answers_per_prompt)]
    sampled = torch.tensor([k > 0 for _ in prompts for k in range(training.answers_per_prompt)], device=device)
    steps, n = training.max_new_tokens, len(rows_ids)
    features = torch.zeros(n, steps, model.config.hidden_size, dtype=torch.float16, device=device)
    chosen = torch.zeros(n, steps, dtype=torch.long, device=device)
    greedy = torch.zeros(n, steps, dtype=torch.long, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    eos = torch.tensor(sorted(engine.eos_token_ids), device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generator = torch.Generator(device=device).manual_seed(training.seed)
    with torch.inference_mode(), tqdm(total=n * steps, desc="draft head: self-generating", unit="tok",
                                      file=sys.stderr) as bar:
        for start in range(0, n, training.batch_size):
            rows = rows_ids[start : start + training.batch_size]
            sel = slice(start, start + len(rows))
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = engine.new_cache()
            alive = torch.ones(len(rows), dtype=torch.bool, device=device)
            for step in range(steps):
                hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                     cache=cache, use_cache=True).last_hidden_state[:, -1]
                logits = model.lm_head(hidden).float()
                best = logits.argmax(-1)
                draw = torch.multinomial(torch.softmax(logits / training.sample_temperature, -1), 1,
                                         generator=generator)[:, 0]
                pick = torch.where(sampled[sel], draw, best)
                features[sel, step], chosen[sel, step], greedy[sel, step] = hidden.half(), pick, best
                lengths[sel] += alive.long()
                alive &= ~torch.isin(pick, eos)
                ids = pick[:, None]
                mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype, device=device)], dim=1)
                positions = positions[:, -1:] + 1
                bar.update(len(rows))
                if not alive.any():
                    bar.update(len(rows) * (steps - step - 1))
                    break
    return features, chosen, greedy, lengths


def train_draft_head(engine: Target, training: DraftHeadTraining, out: Path, answers=None) -> Path:
    """Self-distil a draft head for ``engine``'s model (on its device) and save it to ``out``.

    ``answers``: what ``self_generate`` returned for the same generation settings, to train
    several heads on one generation.
    """
    import torch
    from tqdm import tqdm

    torch.manual_seed(training.seed)
    device = engine.device
    started = time.perf_counter()
    features, chosen, greedy, lengths = answers if answers is not None else self_generate(engine, training)
    generated_seconds = time.perf_counter() - started

    vocab_total = engine.model.config.vocab_size
    counts = torch.bincount(greedy[torch.arange(greedy.shape[1], device=device) < lengths[:, None]],
                            minlength=vocab_total)
    vocab = torch.argsort(counts, descending=True, stable=True)[: training.vocab_size]
    vocab = vocab[counts[vocab] > 0].sort().values
    to_index = torch.full((vocab_total,), -100, dtype=torch.long, device=device)
    to_index[vocab] = torch.arange(len(vocab), device=device)

    hidden = engine.model.config.hidden_size
    head = _head_module(hidden, training.inner_size, training.blocks).to(device)
    embedding = engine.model.get_input_embeddings().weight.detach().float()
    out_weight = engine.model.lm_head.weight.detach().float()[vocab]
    unroll = training.unroll
    # Training samples: (row, i) with the steps i .. i+unroll inside the answer.
    rows, starts = torch.nonzero(torch.arange(greedy.shape[1], device=device)[None, :] + unroll < lengths[:, None],
                                 as_tuple=True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=training.learning_rate, weight_decay=0.0)
    batch = training.train_batch
    total_steps = training.epochs * ((len(rows) + batch - 1) // batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, training.learning_rate, total_steps=total_steps)
    generator = torch.Generator(device=device).manual_seed(training.seed)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # the head's matmuls only (the target generated in fp32 above)
    with tqdm(total=total_steps, desc=f"draft head: training on {len(rows)} positions", file=sys.stderr) as bar:
        for _epoch in range(training.epochs):
            order = torch.randperm(len(rows), generator=generator, device=device)
            for chunk in order.split(batch):
                r, i = rows[chunk], starts[chunk]
                feature = features[r, i].float()
                loss, hits = 0.0, 0.0
                for j in range(1, unroll + 1):
                    feature = head(feature, embedding[chosen[r, i + j - 1]])
                    logits = feature @ out_weight.T
                    labels = to_index[greedy[r, i + j]]
                    loss = loss + torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
                    loss = loss + torch.nn.functional.smooth_l1_loss(feature, features[r, i + j].float())
                    if j == 1:
                        hits = (logits.argmax(-1) == labels).float().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss) / unroll:.3f}", top1=f"{float(hits):.3f}")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().cpu() for k, v in head.state_dict().items()}
    torch.save({"state": state, "vocab": vocab.int().cpu(), "hidden_size": hidden, "inner_size": training.inner_size,
                "blocks": training.blocks, "training": asdict(training), "samples": len(rows),
                "first_token_accuracy": float(hits),
                "generate_seconds": generated_seconds, "total_seconds": time.perf_counter() - started},
               out.with_suffix(".tmp"))
    out.with_suffix(".tmp").replace(out)
    return out
