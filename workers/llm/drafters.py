"""Where drafted tokens come from (``specdec.drafter_for`` builds the one a config names).

A ``Drafter`` holds what requests share (weights); ``drafter.start(prompt_ids)`` opens a
per-request ``DraftSession`` holding that request's state (a KV cache, an n-gram index).
``session.propose(ids, feature, k, threshold)`` returns up to ``k`` tokens that might follow
``ids``; ``feature`` is the target's last hidden state at the position that chose ``ids[-1]``
(what a trained draft head reads). Drafts that report probabilities stop once the product of
their top probabilities so far (their own estimate that the target keeps the whole draft, as
EAGLE-2 ranks draft paths) falls below ``threshold``; the target decides that position itself.
"""

from __future__ import annotations

import copy
from typing import Protocol

from tessera.workers.llm.steps import crop_cache


class DraftSession(Protocol):
    def propose(self, ids: list[int], feature, k: int, threshold: float) -> list[int]: ...

    def close(self) -> None: ...


class Drafter(Protocol):
    def start(self, prompt_ids: list[int]) -> DraftSession: ...


# ---------------------------------------------------------------------------- n-gram lookup
class NgramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the context's last n tokens and
    propose what followed it (SQL copies table and column names from the schema in the prompt)."""

    def __init__(self, n_max: int, n_min: int):
        self.n_max, self.n_min = n_max, min(n_min, n_max)

    def start(self, prompt_ids: list[int]) -> "NgramSession":
        return NgramSession(self.n_max, self.n_min)


class NgramSession:
    def __init__(self, n_max: int, n_min: int):
        self.n_max, self.n_min = n_max, n_min
        self.continuation_at: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest copy's successor starts
        self.indexed_upto = 0

    def _index(self, ids: list[int]) -> None:
        # Every n-gram that ends before the current last token; later copies overwrite earlier ones.
        for end in range(max(self.indexed_upto, 1), len(ids)):
            for n in range(self.n_min, self.n_max + 1):
                if end - n >= 0:
                    self.continuation_at[tuple(ids[end - n : end])] = end
        self.indexed_upto = max(self.indexed_upto, len(ids))

    def propose(self, ids: list[int], feature, k: int, threshold: float) -> list[int]:
        self._index(ids)
        for n in range(self.n_max, self.n_min - 1, -1):
            if len(ids) < n:
                continue
            start = self.continuation_at.get(tuple(ids[-n:]))
            if start is not None:
                return ids[start : start + k]
        return []

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------- a causal LM as draft
class ModelDrafter:
    """Any causal LM over the same vocabulary drafts greedily with its own KV cache: the target's
    first layers (layer skip), the target's int8 copy, or a separate small model."""

    def __init__(self, causal_lm, device: str = "cpu"):
        self.model = causal_lm
        self.device = device

    def start(self, prompt_ids: list[int]) -> "ModelDraftSession":
        return ModelDraftSession(self)


class ModelDraftSession:
    def __init__(self, drafter: ModelDrafter):
        from transformers import DynamicCache

        self.drafter = drafter
        self.cache = DynamicCache(config=drafter.model.config)
        self.cached_ids: list[int] = []

    def propose(self, ids: list[int], feature, k: int, threshold: float) -> list[int]:
        import torch

        common = 0
        for a, b in zip(self.cached_ids, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # feed at least one token to get the next logits
        crop_cache(self.cache, common)
        self.cached_ids = ids[:common]
        new = ids[common:]
        proposal: list[int] = []
        reach = 1.0
        model = self.drafter.model
        with torch.inference_mode():
            for _ in range(k):
                tensor = torch.tensor([new], dtype=torch.long, device=self.drafter.device)
                hidden = model.model(input_ids=tensor, cache=self.cache, use_cache=True).last_hidden_state
                probs = torch.softmax(model.lm_head(hidden[0, -1:])[0].float(), dim=-1)
                self.cached_ids += new
                top_p, token = torch.max(probs, dim=-1)
                reach *= float(top_p)
                if reach < threshold:
                    break
                proposal.append(int(token))
                new = [int(token)]
        return proposal

    def close(self) -> None:
        self.cache = None


def first_layers(causal_lm, n_layers: int):
    """The target's first ``n_layers`` decoder layers plus its final norm and LM head, sharing weights."""
    import torch.nn as nn

    total = len(causal_lm.model.layers)
    if not 1 <= n_layers < total:
        raise ValueError(f"layer_skip_layers: must be between 1 and {total - 1} for this model, got {n_layers}")
    config = copy.deepcopy(causal_lm.config)
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:n_layers]
    inner = copy.copy(causal_lm.model)
    inner._modules = dict(causal_lm.model._modules)
    inner.layers = nn.ModuleList(list(causal_lm.model.layers[:n_layers]))
    inner.config = config
    shallow = copy.copy(causal_lm)
    shallow._modules = dict(causal_lm._modules)
    shallow.model = inner
    shallow.config = config
    return shallow


def int8_copy(causal_lm):
    """A dynamically int8-quantized copy of the target's linear layers (CPU)."""
    import torch
    import torch.nn as nn

    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(causal_lm), {nn.Linear}, dtype=torch.qint8)


# ---------------------------------------------------------------------------- composition
class FirstProposal:
    """Ask each drafter in turn; the first non-empty proposal is drafted (n-gram before a head)."""

    def __init__(self, drafters: list):
        self.drafters = drafters

    def start(self, prompt_ids: list[int]) -> "FirstProposalSession":
        return FirstProposalSession([d.start(prompt_ids) for d in self.drafters])


class FirstProposalSession:
    def __init__(self, sessions: list):
        self.sessions = sessions

    def propose(self, ids: list[int], feature, k: int, threshold: float) -> list[int]:
        for session in self.sessions:
            proposal = session.propose(ids, feature, k, threshold)
            if proposal:
                return proposal
        return []

    def close(self) -> None:
        for session in self.sessions:
            session.close()
