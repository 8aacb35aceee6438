"""One training / evaluation sample from a scene: ``n_views`` context views and, for novel-view
work, interior target views (:func:`split_context_target`, :func:`as_sample`)."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["split_context_target", "as_sample"]


def split_context_target(n_total: int, n_targets: int) -> tuple[list[int], list[int]]:
    """``(context, target)`` view indices of a sequence of ``n_total`` views: the targets are
    ``n_targets`` interior views spread evenly (so they lie between context views: novel-view
    interpolation, the protocol FLARE is evaluated with); view 0 and the last view are always
    context. E.g. ``(6, 2) -> ([0, 2, 3, 5], [1, 4])``."""
    if n_targets == 0:
        return list(range(n_total)), []
    if n_total - n_targets < 2:
        raise ValueError(f"{n_total} views cannot hold {n_targets} target views and at least 2 context views")
    tgt = sorted({int(round(x)) for x in np.linspace(1, n_total - 2, n_targets)})
    if len(tgt) < n_targets:              # more targets than interior spacing allows: take the first free ones
        tgt = sorted(set(tgt) | set([i for i in range(1, n_total - 1) if i not in tgt][:n_targets - len(tgt)]))
    return [i for i in range(n_total) if i not in tgt], tgt


def as_sample(item, where: str, n_views: int, gen: torch.Generator, n_targets: int = 0) -> dict:
    """A dataset item (``Scene`` or dict with images/K/c2w[/depth]) -> dict of tensors with
    ``n_views`` views (a random subset, in their original order, when the scene has more); with
    ``n_targets``, ``n_views + n_targets`` views are taken and split by :func:`split_context_target`
    into the context (``images``, ...) and the targets (``target_images``, ``target_K``,
    ``target_c2w``, ``target_depth``)."""
    if isinstance(item, dict):
        get = item.get
    else:
        get = lambda k: getattr(item, k, None)  # noqa: E731
    images, K, c2w, depth = get("images"), get("K"), get("c2w"), get("depth")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{where}: expected a Scene (or dict) with images (V, 3, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(item).__name__}")
    V = images.shape[0]
    if V < 2:
        raise ValueError(f"{where}: the scene has {V} view(s); FLARE needs at least 2 views per sample")
    need = n_views + n_targets
    if V < need:
        extra = f" + render.n_targets = {n_targets}" if n_targets else ""
        raise ValueError(f"{where}: the scene has {V} views but data.n_views = {n_views}{extra}; "
                         f"lower data.n_views{' or render.n_targets' if n_targets else ''}")
    idx = torch.arange(V)
    if V > need:
        idx = torch.randperm(V, generator=gen)[:need].sort().values
    src = get("source") or where
    ctx, tgt = split_context_target(need, n_targets)
    out = {}
    for prefix, sel in (("", idx[ctx]), ("target_", idx[tgt])):
        if prefix and not n_targets:
            continue
        out.update({f"{prefix}images": images[sel].float(), f"{prefix}K": K[sel].float(),
                    f"{prefix}c2w": c2w[sel].float(), f"{prefix}depth": None if depth is None else depth[sel].float()})
    out["source"] = str(src)
    return out
