"""Choose FLARE's reference view (view 0) without a learned network (notebook 08).

FLARE expresses every pose and the global pointmap in view 0's camera frame, so the view
that shares the most content with all the others makes the best reference. The released
demo ranks the views by DINOv2 feature similarity; DINOv2 cannot be downloaded here, so we
use two cheap image similarities, averaged:

* **colour histograms**: a joint RGB histogram of ``bins^3`` cells per image, compared
  with the Bhattacharyya coefficient ``sum sqrt(p q)`` (1 = identical distributions);
* **thumbnails**: each image shrunk to a ``thumb x thumb`` grayscale thumbnail (area
  averaging), made zero-mean and unit-norm, compared by cosine similarity (normalised
  cross-correlation), mapped from [-1, 1] to [0, 1].

The reference is the view with the highest mean similarity to the *other* views (ties: the
lowest index). :func:`reference_order` then puts it first and keeps the others in their
original order; the CLI reports that mapping.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["similarity_matrix", "choose_reference_view", "reference_order"]


def _check(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (V, 3, H, W) tensor in [0, 1], got {shape}")
    if images.shape[0] < 2:
        raise ValueError(f"choosing a reference view needs at least 2 views, got {images.shape[0]}")
    return images.detach().to("cpu", torch.float32).clamp(0, 1)


def similarity_matrix(images: torch.Tensor, bins: int = 8, thumb: int = 16) -> torch.Tensor:
    """``(V, V)`` similarities in [0, 1] of ``images (V, 3, H, W)`` in [0, 1] (module docstring):
    the mean of the histogram Bhattacharyya coefficient and the thumbnail correlation mapped to
    [0, 1]. Symmetric, diagonal 1 (for a non-constant image)."""
    x = _check(images)
    V = x.shape[0]
    idx = (x * (bins - 1e-6)).long().clamp(0, bins - 1)                      # (V, 3, H, W)
    cell = (idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2]                  # (V, H, W)
    hist = torch.stack([torch.bincount(c.flatten(), minlength=bins ** 3) for c in cell]).float()
    p = (hist / hist.sum(1, keepdim=True)).sqrt()
    s_hist = (p @ p.T).clamp(0, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    t = F.adaptive_avg_pool2d(gray, thumb).reshape(V, -1)
    t = t - t.mean(1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-8)
    s_thumb = 0.5 * (t @ t.T + 1.0)
    return 0.5 * (s_hist + s_thumb)


def choose_reference_view(images: torch.Tensor, bins: int = 8, thumb: int = 16) -> tuple[int, torch.Tensor]:
    """The most central view of ``images (V, 3, H, W)``: ``(index, scores (V,))`` where
    ``scores[i]`` is view i's mean similarity to the other views (:func:`similarity_matrix`)."""
    S = similarity_matrix(images, bins, thumb)
    V = S.shape[0]
    scores = (S.sum(1) - S.diagonal()) / (V - 1)
    return int(torch.argmax(scores)), scores     # argmax returns the first maximum


def reference_order(n_views: int, ref: int) -> list[int]:
    """Order of the input views with ``ref`` first and the others in their original order:
    new view ``k`` is input view ``order[k]``. ValueError if ``ref`` is out of range."""
    if isinstance(ref, bool) or not isinstance(ref, int) or not 0 <= ref < n_views:
        raise ValueError(f"reference view must be an index in [0, {n_views - 1}] for {n_views} views, got {ref!r}")
    return [ref] + [i for i in range(n_views) if i != ref]
