"""``Scene``: the one container for posed multi-view data (notebook 00), and its loaders.

Conventions (stated once, for the whole workbook; see README "Conventions"):

* ``images``  float32 ``(V, 3, H, W)`` RGB in [0, 1] (the model's [-1, 1] comes from
  :func:`flare_nb.preprocess.to_model_input`).
* ``K``       float32 ``(V, 3, 3)`` pinhole intrinsics in pixels of *these* images, OpenCV
  pixel-centre convention: the centre of the top-left pixel is (0, 0).
* ``c2w``     float32 ``(V, 4, 4)`` camera-to-world, OpenCV axes (x right, y down, z forward).
* ``depth``   optional float32 ``(V, H, W)`` z-depth along the optical axis; 0 marks no data.
* ``names``   one string per view (file stem or generated id).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class Scene:
    images: torch.Tensor
    K: torch.Tensor
    c2w: torch.Tensor
    depth: torch.Tensor | None = None
    names: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        V = self.images.shape[0] if self.images.ndim == 4 else -1
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"Scene.images must be (V, 3, H, W), got {tuple(self.images.shape)}")
        if V < 2:
            raise ValueError(f"a scene needs at least 2 views, got {V} ({self.source or 'unnamed scene'})")
        H, W = self.images.shape[-2:]
        if tuple(self.K.shape) != (V, 3, 3):
            raise ValueError(f"Scene.K must be ({V}, 3, 3) for {V} images, got {tuple(self.K.shape)}")
        if tuple(self.c2w.shape) != (V, 4, 4):
            raise ValueError(f"Scene.c2w must be ({V}, 4, 4) for {V} images, got {tuple(self.c2w.shape)}")
        if self.depth is not None and tuple(self.depth.shape) != (V, H, W):
            raise ValueError(f"Scene.depth must be ({V}, {H}, {W}), got {tuple(self.depth.shape)}")
        if not self.names:
            self.names = [f"view{i:03d}" for i in range(V)]
        if len(self.names) != V:
            raise ValueError(f"Scene.names has {len(self.names)} entries for {V} images")

    @property
    def n_views(self) -> int:
        return self.images.shape[0]

    @property
    def hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def subset(self, idx) -> "Scene":
        """The views ``idx`` (a list of indices), in that order."""
        idx = list(idx)
        return replace(self, images=self.images[idx], K=self.K[idx], c2w=self.c2w[idx],
                       depth=None if self.depth is None else self.depth[idx],
                       names=[self.names[i] for i in idx])
