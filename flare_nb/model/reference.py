"""The deterministic weights of the reference fixtures (``data/flare_reference``, notebook 01).

The fixtures were made by running the *official* FLARE code with every parameter set by a
recipe that depends only on the parameter's name and shape, so a re-implementation with the
same names gets the same weights without any checkpoint:

* seed = first 8 hex digits of ``sha256(name)``; ``r = randn(shape)`` from a CPU generator
  with that seed (float32);
* 1-D (and 0-D) tensors: ``1 + 0.02 r`` for names ending in ``weight``, else ``0.02 r``;
* others: ``r * gain / sqrt(fan)`` with ``fan = p[0].numel()``;
* a tensor registered under several names is filled once, seeded by the first name in
  sorted order (``downstream_head*.dpt.scratch.layer{k}_rn.weight`` rather than
  ``...layer_rn.{k-1}.weight``). ``ALIASES`` lists the released alias pairs, so a model that
  registers only one of the two names is seeded the same way.

``fill_hash`` computes the README's optional check over the *full* released state dict: the
keys our model omits are generated from the manifest shapes.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from flare_nb.model.config import official_geometry
from flare_nb.model.flare import FlareModel

__all__ = ["DATA_DIR", "load_manifest", "manifest_shapes", "fill_value", "deterministic_fill", "fill_hash",
           "build_reference_model", "teacher_from_fixture", "compare_array", "format_comparison", "ALIASES",
           "FILL_SHA256", "load_fixture", "compare_fixture", "run_fixture"]

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "flare_reference"

#: expected ``fill_hash`` of the released models (from the fixture README)
FILL_SHA256 = {
    "geometry": "bfb0eb16f8f044cb9a976a9ea8d7affba3db2bdbcdb3d6c0f2cc146960d2d39d",
    "nvs": "effb6e003cc773034b453bdff01352f6ffc5d4e9d430c7f09b57217246b52971",
}

#: released alias pairs (one tensor, two state-dict names)
ALIASES = tuple(
    (f"downstream_head{h}.dpt.scratch.layer{k}_rn.weight", f"downstream_head{h}.dpt.scratch.layer_rn.{k - 1}.weight")
    for h in (1, 2) for k in (1, 2, 3, 4))

_META = ("buffers", "aliases", "unused_at_inference")


def load_manifest(kind: str = "geometry") -> dict:
    """The released manifest (``manifest_geometry_pose.json`` / ``manifest_NVS.json``) as a dict."""
    name = {"geometry": "manifest_geometry_pose.json", "nvs": "manifest_NVS.json"}.get(kind)
    if name is None:
        raise ValueError(f"kind must be 'geometry' or 'nvs', got {kind!r}")
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"reference manifest not found: {path}")
    return json.loads(path.read_text())


def manifest_shapes(kind: str = "geometry") -> dict[str, tuple]:
    """``{state-dict key: shape}`` of the released model (meta entries removed)."""
    return {k: tuple(v) for k, v in load_manifest(kind).items() if k not in _META}


def fill_value(name: str, shape, gain: float = 1.0) -> torch.Tensor:
    """The recipe's float32 value for a parameter called ``name`` with ``shape``."""
    shape = tuple(int(s) for s in shape)
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    r = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    if len(shape) <= 1:
        return 1.0 + 0.02 * r if name.endswith("weight") else 0.02 * r
    fan = math.prod(shape[1:])
    return r * (gain / math.sqrt(fan))


def _seed_names(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``{seed name: parameter}``, one entry per distinct tensor; names are the released ones
    (``FlareModel.released_names()``), other modules' own names."""
    partner = {}
    for a, b in ALIASES:
        partner[a], partner[b] = b, a
    released = model.released_names() if hasattr(model, "released_names") else {}
    groups: dict[int, list] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), [p, set()])[1].add(released.get(name, name))
    out = {}
    for p, names in groups.values():
        names |= {partner[n] for n in names if n in partner}
        out[min(names)] = p
    return out


@torch.no_grad()
def deterministic_fill(model: torch.nn.Module, gain: float = 1.0) -> torch.nn.Module:
    """Fill every parameter of ``model`` in place with the recipe (alias-aware); returns ``model``.

    Works for any dtype / device (values are made in float32 on the CPU, then cast).
    """
    for name, p in sorted(_seed_names(model).items()):
        p.copy_(fill_value(name, p.shape, gain).to(p.dtype))
    return model


def build_reference_model(cfg=None, gain: float = 1.0):
    """A ``FlareModel(cfg)`` (default ``official_geometry()``) in eval mode with the recipe's
    weights, built on the meta device first so no time is spent on random initialisation."""

    with torch.device("meta"):
        model = FlareModel(cfg if cfg is not None else official_geometry())
    model = model.to_empty(device="cpu")
    return deterministic_fill(model, gain).eval()


def fill_hash(state_dict: dict, manifest: dict | None = None, gain: float = 1.0, n_first: int = 1024) -> str:
    """sha256 over the sorted full state dict (released names, e.g.
    ``flare_nb.model.checkpoint.released_state_dict(model)``): ``name.encode()`` then the little-endian float32
    bytes of the first ``n_first`` flattened values, for every name.

    ``manifest``: ``{name: shape}`` of the released model; names missing from ``state_dict``
    (modules our model omits) are generated with ``fill_value`` (alias-aware: the NVS model
    omits head 1, whose ``layer_rn.{k-1}`` alias names hold the ``layer{k}_rn`` values).
    Compare with ``FILL_SHA256``.
    """
    names = set(state_dict) | set(manifest or {})
    h = hashlib.sha256()
    for name in sorted(names):
        if name in state_dict:
            t = state_dict[name]
        else:  # generated; an alias of a released tensor is seeded by the first name of its pair
            seed = min([name] + [x for pair in ALIASES if name in pair for x in pair])
            t = fill_value(seed, manifest[name], gain)
        head = t.detach().reshape(-1)[:n_first].to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(head.numpy().astype("<f4").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- parity checks
#: recommended tolerances of the fixture README (teacher-forced): max |diff| / std(reference)
STD_TOLERANCE = {
    "patch_embed_out": 1e-4, "enc_norm_out": 1e-4, "stage1_cam_tokens": 1e-4,
    "stage2_tokens_last": 1e-4, "stage3_tokens_last": 1e-4, "enc_stage2_norm_out": 1e-4,
    "stage2_cam_tokens": 3e-4,
    "stage1_pose_enc": 1e-4, "stage2_pose_enc": 1e-4, "stage1_focal": 1e-4, "stage2_focal": 1e-4,
    "stage1_R": 1e-4, "stage2_R": 1e-4, "stage2_camera_embed_in": 1e-4, "stage3_camera_embed_in": 1e-4,
}
#: pointmaps: per-point relative error, log1p|p| difference and unit-direction difference
POINT_TOLERANCE = 1e-3
#: confidences: relative difference
CONF_TOLERANCE = 1e-3


def teacher_from_fixture(ref: dict, stages=("stage1", "stage2")) -> dict:
    """The README's teacher forcing: iteration k >= 1 of each pose head starts from the
    fixture's ``stage{s}_pose_enc[k-1]``; iteration 0 starts from zero as usual."""
    out = {}
    for s in stages:
        enc = torch.as_tensor(ref[f"{s}_pose_enc"])
        out[s] = [None] + [enc[k - 1] for k in range(1, enc.shape[0])]
    return out


def compare_array(name: str, mine, ref) -> dict:
    """Deviation figures of one array. Pointmaps (``pts3d*``): max per-point ``|dp| / |p|``,
    max ``|log1p|p| - log1p|q||``, max unit-direction difference; confidences (``conf*``):
    max ``|dc| / c``; everything else: max ``|diff| / std(ref)``. Also the plain max abs diff.
    """
    a = torch.as_tensor(mine).detach().double().cpu()
    b = torch.as_tensor(ref).double()
    if a.shape != b.shape:
        raise ValueError(f"{name}: shape {tuple(a.shape)} differs from the reference {tuple(b.shape)}")
    out = {"max_abs": float((a - b).abs().max())}
    if name.startswith("pts3d"):
        na, nb = a.norm(dim=-1), b.norm(dim=-1)
        out["rel"] = float(((a - b).norm(dim=-1) / nb.clamp(min=1e-12)).max())
        out["log1p"] = float((torch.log1p(na) - torch.log1p(nb)).abs().max())
        out["dir"] = float((a / na[..., None].clamp(min=1e-12) - b / nb[..., None].clamp(min=1e-12)).norm(dim=-1).max())
        out["worst"], out["tol"] = max(out["rel"], out["log1p"], out["dir"]), POINT_TOLERANCE
    elif name.startswith("conf"):
        out["rel"] = float(((a - b).abs() / b.abs()).max())
        out["worst"], out["tol"] = out["rel"], CONF_TOLERANCE
    else:
        out["std_units"] = float((a - b).abs().max() / b.std())
        out["worst"], out["tol"] = out["std_units"], STD_TOLERANCE.get(name, 1e-4)
    out["ok"] = bool(out["worst"] <= out["tol"])
    return out


def format_comparison(results: dict) -> str:
    """One line per array of ``{name: compare_array(...)}``: ok / BAD, worst deviation against its
    tolerance, the deviation figures and the max abs difference (the parity tests print it)."""
    lines = []
    for k, r in results.items():
        detail = ", ".join(f"{n} {r[n]:.2e}" for n in ("std_units", "rel", "log1p", "dir") if n in r)
        lines.append(f"  {k:24s} {'ok ' if r['ok'] else 'BAD'} worst {r['worst']:.2e} (tol {r['tol']:.0e}); "
                     f"{detail}; max abs {r['max_abs']:.2e}")
    return "\n".join(lines)


def load_fixture(name: str) -> dict:
    """The arrays of ``data/flare_reference/<name>`` (e.g. ``parity_nvs.npz``) as ``{name: ndarray}``."""
    import numpy as np

    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"reference fixture missing: {path}")
    return dict(np.load(path))


def compare_fixture(mine: dict, ref: dict, inputs=()) -> dict:
    """``{name: compare_array(name, mine[name], ref[name])}`` for every array of the fixture ``ref``
    except its ``inputs``; KeyError naming what ``mine`` lacks."""
    names = [k for k in ref if k not in inputs]
    lacking = [k for k in names if k not in mine]
    if lacking:
        raise KeyError(f"no output of ours for the fixture arrays {lacking}")
    return {k: compare_array(k, mine[k], ref[k]) for k in names}


def _copy(v):
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    return v.detach().clone() if isinstance(v, torch.Tensor) else v


def run_fixture(ref: dict, inputs, label: str, cfg=None, collect=None, **forward_kw) -> dict:
    """One parity run: the full-size reference model of ``cfg`` (default ``official_geometry()``)
    with the recipe's weights, run on ``ref["images"]`` with the README's teacher forcing and
    ``forward_kw``; the model is freed before comparing.

    ``collect(out) -> {name: tensor or dict}`` picks our arrays (default: the intermediates and
    the four pointmap / confidence outputs). Returns ``hash`` (:func:`fill_hash` against the
    manifest of the model's kind), ``results`` (:func:`compare_fixture`), ``mine`` (copies of
    the collected arrays); prints the timings and :func:`format_comparison`.
    """
    import gc
    import time

    cfg = cfg if cfg is not None else official_geometry()
    t0 = time.perf_counter()
    model = build_reference_model(cfg)
    t_build = time.perf_counter() - t0
    digest = fill_hash(model.released_state_dict(), manifest_shapes(cfg.kind))
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(torch.from_numpy(ref["images"]), pose_teacher=teacher_from_fixture(ref), **forward_kw)
    t_fwd = time.perf_counter() - t0
    if collect is None:
        mine = dict(out.intermediates, pts3d_cam=out.pts3d_cam, conf_cam=out.conf_cam,
                    pts3d_global=out.pts3d_global, conf_global=out.conf_global)
    else:
        mine = collect(out)
    mine = _copy(mine)
    del model, out
    gc.collect()
    results = compare_fixture(mine, ref, inputs)
    print(f"\nparity {label}: {n_params / 1e9:.3f} G parameters, build+fill {t_build:.0f} s, forward {t_fwd:.0f} s "
          f"(CPU, float32, {torch.get_num_threads()} threads)")
    print(format_comparison(results))
    return {"hash": digest, "results": results, "mine": mine}
