"""AdamW (betas 0.9, 0.95; no decay on biases and 1-D parameters) and its schedule: linear
warm-up then cosine (:func:`lr_factor`)."""
from __future__ import annotations

import math

import torch

from flare_nb.train.config import TrainConfig

__all__ = ["make_optimizer", "lr_factor", "remap_optimizer_state"]


def _is_no_decay(name: str, p) -> bool:
    return p.ndim <= 1 or name.endswith(".bias")


def make_optimizer(model, cfg: TrainConfig):
    """AdamW (``optim.name: adamw``, the released choice) or plain SGD (``sgd``) on the parameters
    with ``requires_grad`` (weight decay on >= 2-D weights only) and a ``LambdaLR`` of :func:`lr_factor`."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _is_no_decay(n, p) else decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=o.lr) if o.name == "sgd" else \
        torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, o.warmup_steps, o.min_lr_ratio))
    return opt, sched


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier for the update after ``step`` completed steps: linear warm-up
    ``(step + 1) / warmup`` for ``step < warmup``, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def remap_optimizer_state(state: dict, saved_names: list[str], model, trained: list[str]) -> dict:
    """The optimizer state dict ``state`` of a checkpoint, re-indexed for :func:`make_optimizer` on
    ``model`` now.

    ``torch.optim`` keys its state by the position of each parameter in its groups, and that
    position follows the module tree. ``saved_names`` (the checkpoint's ``trained``: released names
    in the order the saving model listed its parameters) says which parameter each saved position
    was, so a checkpoint still resumes after the module tree was rearranged. ``trained`` is the
    model's own names (``named_parameters`` order) of the parameters it trains now.
    Raises ``ValueError`` when the two runs do not train the same parameters."""
    released = model.released_names()
    shapes = dict(model.named_parameters())
    now = [released[n] for n in trained]
    if sorted(now) != sorted(saved_names):
        only_saved = sorted(set(saved_names) - set(now))[:3]
        only_now = sorted(set(now) - set(saved_names))[:3]
        raise ValueError(f"the checkpoint's optimizer trained other parameters (only there: {only_saved}; "
                         f"only here: {only_now})")
    by_released = {released[n]: (n, shapes[n]) for n in trained}

    def order(names):
        decay = [r for r in names if not _is_no_decay(*by_released[r])]
        return decay + [r for r in names if _is_no_decay(*by_released[r])]

    old_index = {r: i for i, r in enumerate(order(saved_names))}
    new_order = order(now)
    groups = state["param_groups"]
    if sum(len(g["params"]) for g in groups) != len(new_order):
        raise ValueError("the checkpoint's optimizer holds another number of parameters than it trained")
    old_ids = [i for g in groups for i in g["params"]]
    out_state, start = {}, 0
    new_groups = []
    for g in groups:
        ids = list(range(start, start + len(g["params"])))
        for j in ids:
            old = old_ids[old_index[new_order[j]]]
            if old in state["state"]:
                out_state[j] = state["state"][old]
        new_groups.append({**g, "params": ids})
        start += len(g["params"])
    return {"state": out_state, "param_groups": new_groups}
