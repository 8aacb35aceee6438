"""What a training step sees: the datasets of ``cfg.data``, the curriculum of the synthetic
orbit spread, the scenes of each step (fixed by ``(seed, step, slot)``, so independent of the
number of processes and of resuming) and their batching."""
from __future__ import annotations

import torch

from flare_nb.scenes.sample import as_sample
from flare_nb.scenes.scene import load_scene
from flare_nb.scenes.synthetic import SyntheticDataset
from flare_nb.train.config import TrainConfig, seed_list
from flare_nb.device import resolve_device

__all__ = ["slot_generator", "make_datasets", "raycast_device", "n_targets", "orbit_arc_at", "StepBatches", "collate", "model_inputs", "b_to"]


def slot_generator(seed: int, step: int, slot: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + slot * 8 + salt)


def make_datasets(cfg: TrainConfig):
    """``(train, val)`` datasets of :class:`~flare_nb.scenes.scene.Scene` for ``cfg.data``."""
    d = cfg.data
    if d.kind == "synthetic":

        kw = dict(n_objects=d.n_objects, orbit_arc=tuple(d.orbit_arc), raycast=d.raycast,
                  device=raycast_device(cfg))
        n = d.n_views + n_targets(cfg)           # stage 2: target views come from the same sequence
        train = SyntheticDataset(seed_list(d.train_seeds), n, tuple(d.size), d.modes, cache=d.cache, **kw)
        vs = seed_list(d.val_seeds)
        val = SyntheticDataset(vs, n, tuple(d.size), d.modes, **kw) if vs else []
        return train, val

    size = (int(d.size[0]), int(d.size[1]))            # (W, H), as load_scene takes it
    return [load_scene(p, size=size) for p in d.paths], [load_scene(p, size=size) for p in d.val_paths]


def raycast_device(cfg: TrainConfig):
    """Where the torch ray caster renders synthetic scenes: the training device, but the CPU when
    DataLoader worker processes render them (a forked worker cannot use CUDA)."""
    if cfg.run.num_workers > 0:
        return torch.device("cpu")

    dev = resolve_device(cfg.run.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())   # this process's GPU under DDP
    return dev


def n_targets(cfg: TrainConfig) -> int:
    return cfg.render.n_targets if cfg.stage == 2 else 0


def orbit_arc_at(cfg: TrainConfig, step: int) -> tuple[float, float] | None:
    """The synthetic orbit spread of training step ``step`` under the curriculum
    (``data.orbit_arc_start`` -> ``data.orbit_arc`` linearly over ``data.curriculum_steps``),
    or None without one (the dataset's own ``orbit_arc``). Depends on the step only, so resuming
    and any number of processes see the same scenes."""
    d = cfg.data
    if not d.curriculum_steps or d.orbit_arc_start is None:
        return None
    f = min(1.0, step / d.curriculum_steps)
    return tuple(float(a + f * (b - a)) for a, b in zip(d.orbit_arc_start, d.orbit_arc))


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset over steps: item ``step`` is this process's part of global batch ``step``.

    Global sample position ``p = step * B + slot`` -> epoch ``p // N``, dataset index
    ``perm_epoch[p % N]`` with ``perm_epoch`` a permutation seeded by ``(seed, epoch)``."""

    def __init__(self, dataset, cfg: TrainConfig, slots: list[int]):
        self.dataset, self.cfg, self.slots = dataset, cfg, slots
        self.n = len(dataset)
        self._perms: dict[int, torch.Tensor] = {}

    def index(self, p: int) -> int:
        epoch = p // self.n
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(
                self.cfg.seed * 7919 + epoch))
        return int(self._perms[epoch][p % self.n])

    def __len__(self):
        return self.cfg.steps

    def __getitem__(self, step: int) -> dict:
        B = self.cfg.batch_size
        arc = orbit_arc_at(self.cfg, step) if hasattr(self.dataset, "scene") else None
        samples, ids = [], []
        for s in self.slots:
            i = self.index(step * B + s)
            ids.append(i)
            item = self.dataset.scene(i, orbit_arc=arc) if arc is not None else self.dataset[i]
            samples.append(as_sample(item, f"training dataset item {i}", self.cfg.data.n_views,
                                      slot_generator(self.cfg.seed, step, s, 7), n_targets(self.cfg)))
        return collate(samples, ids, self.slots)


def collate(samples: list[dict], ids, slots) -> dict:
    shapes = {tuple(s["images"].shape) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"scenes of one batch must share (V, 3, H, W), got {sorted(shapes)} for "
                         f"{[s['source'] for s in samples]}; resize them (data.size) first")
    out = {"source": [s["source"] for s in samples], "index": list(ids), "slot": list(slots)}
    for prefix in ("", "target_") if "target_images" in samples[0] else ("",):
        for k in ("images", "K", "c2w"):
            out[prefix + k] = torch.stack([s[prefix + k] for s in samples])
        has_depth = all(s[prefix + "depth"] is not None for s in samples)
        out[prefix + "depth"] = torch.stack([s[prefix + "depth"] for s in samples]) if has_depth else None
    return out


def model_inputs(model, batch: dict, device) -> dict:
    """Extra forward arguments: the NVS model takes the context intrinsics ``K (B, V, 3, 3)``."""
    m = model.module if hasattr(model, "module") else model
    return {"intrinsics": batch["K"].to(device)} if m.cfg.kind == "nvs" else {}


def b_to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
