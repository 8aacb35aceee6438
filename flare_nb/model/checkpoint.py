"""Loading and saving FLARE weights (notebook 01).

Accepted files:

* ``.pth`` / ``.pt``: ``{"model": state_dict}`` (the released ``geometry_pose.pth``) or a
  bare state dict (the released ``NVS.pth``), read with ``torch.load(weights_only=True)``
  (memory-mapped when the file allows it, so a 5.7 GB checkpoint is not copied twice);
* ``.safetensors``.

Tensors may be float32 or bfloat16; they are cast to the model's dtype on copy.

``load_flare_checkpoint`` refuses silently wrong loads: before touching the model it checks
the model kind (geometry vs NVS), every shape, missing and unexpected keys, and raises a
``CheckpointError`` listing everything that is wrong. Keys of modules ``FlareModel`` does not
build (never used at inference, ``model.omitted_key_prefixes(kind)``: for the geometry model
the NVS-only parts, for the NVS model ``downstream_head1``) are skipped and reported.
The kind of a checkpoint is ``"nvs"`` when it holds any NVS-only key (``NVS_ONLY_KEYS``:
``patch_embed_fine``, ``decoder_embed_stage2``, ``decoder_embed_fxfycxcy``), else ``"geometry"``;
it must equal the model's ``cfg.kind``.
Alias pairs (``...layer{k}_rn.weight`` / ``...layer_rn.{k-1}.weight``) may appear once or twice.

Shipped checkpoints describe themselves (``SHIPPED_FORMAT``)::

    {"format": "flare_nb.shipped/1", "model": state_dict,
     "model_config": FlareConfig.to_dict() (tuples as lists), "image_size": [H, W]}

only dicts, lists, ints, floats and strings beside the tensors, so ``torch.load(weights_only=True)``
reads them. :func:`read_checkpoint_info` returns that description (a ``CheckpointInfo``), also for
a ``flare_nb.train`` checkpoint (its ``model_config`` and ``config.data.size``, which is (W, H)); files without one
(the released weights, older shipped files) give ``None``. The native ``image_size`` is what the
model was trained at; every consumer of a shipped model uses it when no size is given.

Files hold the released names. ``FlareModel`` nests its parameters by stage
(``encoder.enc_blocks.0...``); :func:`released_state_dict` is the one place where our names
meet the released ones (``FlareModel.released_names()``, generated from the module tree), so
the checks, reports and saved files speak released names only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flare_nb.model.config import FlareConfig
from flare_nb.model.flare import omitted_key_prefixes
from flare_nb.model.reference import ALIASES

__all__ = ["CheckpointError", "LoadReport", "CheckpointInfo", "SHIPPED_FORMAT", "TRAIN_FORMAT",
           "read_checkpoint_info", "checkpoint_info_from", "read_state_dict", "detect_kind", "check_state_dict",
           "load_flare_checkpoint", "save_flare_checkpoint", "released_state_dict", "NVS_ONLY_KEYS", "GEOMETRY_ONLY_KEYS"]

#: key prefixes that only the released NVS model has / only the geometry model has
NVS_ONLY_KEYS = ("patch_embed_fine.", "decoder_embed_stage2.", "decoder_embed_fxfycxcy.")
GEOMETRY_ONLY_KEYS = ("patch_embed_coarse.",)
_ALLOWED_DTYPES = (torch.float32, torch.bfloat16)
_PARTNER = {**{a: b for a, b in ALIASES}, **{b: a for a, b in ALIASES}}


#: the ``format`` of a self-describing shipped checkpoint; of a training checkpoint (flare_nb.train.state)
SHIPPED_FORMAT = "flare_nb.shipped/1"
TRAIN_FORMAT = "flare_nb.train/1"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a self-describing checkpoint says about itself: the ``FlareConfig`` its weights
    belong to, its native input size ``image_size = (H, W)`` (None only for a training
    checkpoint without ``config.data.size``) and its ``format``."""

    model_config: FlareConfig
    image_size: tuple[int, int] | None
    format: str


def _plain(v):
    """Tuples as lists (recursively): the shipped file holds only plain Python values."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _config_from_dict(d, where: str) -> FlareConfig:
    if not isinstance(d, dict):
        raise CheckpointError(f"{where}: model_config must be a dict of FlareConfig fields, got "
                              f"{type(d).__name__}; export the checkpoint again with scripts/export_checkpoint.py")
    known = set(FlareConfig.__dataclass_fields__)
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise CheckpointError(f"{where}: model_config has unknown fields {', '.join(unknown[:5])}; export the "
                              "checkpoint again with scripts/export_checkpoint.py")
    try:
        return FlareConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: model_config is not valid ({_first_words(e, 25)}); export the "
                              "checkpoint again with scripts/export_checkpoint.py") from None


def _check_image_size(size, cfg: FlareConfig, where: str) -> tuple[int, int]:
    ok = (isinstance(size, (list, tuple)) and len(size) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size))
    if not ok:
        raise CheckpointError(f"{where}: image_size must be [H, W], two positive ints, got {size!r}; export the "
                              "checkpoint again with scripts/export_checkpoint.py")
    H, W = int(size[0]), int(size[1])
    if H % cfg.multiple or W % cfg.multiple:
        raise CheckpointError(f"{where}: image_size {H}x{W} (HxW) is not a multiple of the model's "
                              f"{cfg.multiple} px (patch {cfg.patch_size} x coarse stride {cfg.coarse_stride}); "
                              "export the checkpoint again with scripts/export_checkpoint.py")
    return H, W


def checkpoint_info_from(obj, where: str = "checkpoint") -> CheckpointInfo | None:
    """The ``CheckpointInfo`` of a loaded checkpoint object (shipped or ``flare_nb.train``), ``None``
    for one without a description (a bare state dict, ``{'model': sd}``). ``CheckpointError``
    (one line naming ``where`` and the field) when a description is there but wrong."""
    if not isinstance(obj, dict) or not any(k in obj for k in ("format", "model_config", "image_size")):
        return None
    fmt = obj.get("format")
    if fmt == TRAIN_FORMAT:
        cfg = _config_from_dict(obj.get("model_config"), where)
        data = obj.get("config", {}).get("data", {}) if isinstance(obj.get("config"), dict) else {}
        wh = data.get("size") if isinstance(data, dict) else None       # the training config's order: (W, H)
        if wh is None:                                                   # a run without data settings
            return CheckpointInfo(cfg, None, fmt)
        hw = [wh[1], wh[0]] if isinstance(wh, (list, tuple)) and len(wh) == 2 else wh
        return CheckpointInfo(cfg, _check_image_size(hw, cfg, f"{where} (config.data.size, W x H)"), fmt)
    if fmt != SHIPPED_FORMAT:
        raise CheckpointError(f"{where}: unknown checkpoint format {fmt!r} (expected {SHIPPED_FORMAT!r}); export it "
                              "again with scripts/export_checkpoint.py, or keep only {'model': state_dict}")
    missing = [k for k in ("model_config", "image_size") if k not in obj]
    if missing:
        raise CheckpointError(f"{where}: a {SHIPPED_FORMAT} checkpoint without {' and '.join(missing)}; export it "
                              "again with scripts/export_checkpoint.py")
    cfg = _config_from_dict(obj["model_config"], where)
    return CheckpointInfo(cfg, _check_image_size(obj["image_size"], cfg, where), fmt)


def read_checkpoint_info(path) -> CheckpointInfo | None:
    """``CheckpointInfo`` of the ``.pth``/``.pt`` file ``path`` (memory-mapped, the tensors are not
    read), ``None`` for files without one (``.safetensors``, released weights, older shipped files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() not in (".pth", ".pt", ".bin"):
        return None
    return checkpoint_info_from(_torch_load_tensors(path), str(path))


def released_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict under the released names (``FlareModel.released_state_dict``); the
    plain ``state_dict()`` for modules that already use them (e.g. a standalone head)."""
    fn = getattr(model, "released_state_dict", None)
    return fn() if callable(fn) else model.state_dict()


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message lists every problem."""


@dataclass
class LoadReport:
    """What ``load_flare_checkpoint`` did."""

    path: str
    kind: str
    n_loaded: int
    dtypes: list[str]
    skipped_unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {self.n_loaded} tensors ({', '.join(self.dtypes)}) from {self.path} [{self.kind} checkpoint]"]
        if self.skipped_unused:
            lines.append(f"skipped {len(self.skipped_unused)} keys of modules unused at inference "
                         f"(e.g. {', '.join(self.skipped_unused[:3])})")
        if self.missing:
            lines.append(f"missing (left as they were): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"ignored unexpected keys: {', '.join(self.unexpected)}")
        return "\n".join(lines)


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt`` (``{'model': sd}`` or bare) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors' errors name no file
            raise CheckpointError(f"{path} is not a valid .safetensors file ({_first_words(e)}); copy or "
                                  "download it again") from None
    if suffix not in (".pth", ".pt", ".bin"):
        raise ValueError(f"unknown checkpoint format {suffix!r} ({path}); expected .pth, .pt or .safetensors")
    obj = _torch_load_tensors(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        top = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a state dict or {{'model': state_dict}} of tensors, got {top}")
    return obj


def _first_words(e: BaseException, n: int = 12) -> str:
    words = str(e).split()
    return " ".join(words[:n]) + (" ..." if len(words) > n else "") if words else type(e).__name__


_LAST_READ: dict = {}      # the last small file read: {"key": (path, size, mtime_ns), "obj": ...}
_REMEMBER_BYTES = 64 << 20  # larger files (the released weights) are not kept mapped after use


def _dict_copy(obj):
    return {k: _dict_copy(v) for k, v in obj.items()} if isinstance(obj, dict) else obj


def _torch_load_tensors(path: Path):
    """``torch.load(weights_only=True)`` with one clear ``CheckpointError`` per way a file can be
    refused (never advising to load it unsafely); torch's own warnings are not shown.

    The last file read, if under 64 MB, is remembered (by path, size and modification time), so that one command
    reading a checkpoint's description, then its weights, reads the file once; callers get
    their own copies of its dicts (the tensors are the memory-mapped file's, never written)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _LAST_READ.get("key") == key:
        return _dict_copy(_LAST_READ["obj"])
    obj = _torch_load_uncached(path)
    _LAST_READ.clear()
    if st.st_size <= _REMEMBER_BYTES:
        _LAST_READ.update(key=key, obj=obj)
    return _dict_copy(obj)


def _torch_load_uncached(path: Path):
    import pickle
    import warnings
    import zipfile

    with open(path, "rb") as f:
        head = f.read(8)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and not head.startswith(b"\x80"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle: "
                              "random or other data); expected a .pth/.pt state dict or a .safetensors file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(f"{path} is refused: it holds Python objects other than tensors (code, classes "
                                  "or a pickled program), which flare-nb never runs; use a checkpoint holding only "
                                  "tensors (a state dict) or a .safetensors file") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (damaged pickle data); copy or "
                              "download it again") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        what = "a damaged or truncated zip archive" if is_zip else "damaged or truncated data"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({what}: {type(e).__name__}); "
                              "copy or download it again") from None


def detect_kind(keys) -> str:
    """``"nvs"`` when any NVS-only key is present, else ``"geometry"``."""
    return "nvs" if any(k.startswith(NVS_ONLY_KEYS) for k in keys) else "geometry"


def check_state_dict(model_shapes: dict, ckpt_shapes: dict, model_kind: str = "geometry",
                     ckpt_dtypes: dict | None = None, strict: bool = True):
    """Compare shapes only (no tensors needed): ``{name: shape}`` of the model and the checkpoint.

    Returns ``(problems, skipped_unused, missing, unexpected)``; ``problems`` is a list of
    human-readable lines, empty when the checkpoint fits. With ``strict`` missing and
    unexpected keys are problems; otherwise they are only returned.
    """
    problems = []
    omitted = omitted_key_prefixes(model_kind)
    kind = detect_kind(ckpt_shapes)
    if kind != model_kind:
        marks = sorted(k for k in ckpt_shapes if k.startswith(NVS_ONLY_KEYS))[:3]
        problems.append(f"wrong model kind: this is a {kind} checkpoint (it has {', '.join(marks)}), "
                        f"the model is a {model_kind} model")
    skipped = sorted(k for k in ckpt_shapes if k not in model_shapes and k.startswith(omitted))
    unexpected = sorted(k for k in ckpt_shapes if k not in model_shapes and not k.startswith(omitted))
    missing = sorted(k for k in model_shapes
                     if k not in ckpt_shapes and _PARTNER.get(k) not in ckpt_shapes)
    bad_shapes = [f"{k}: checkpoint {tuple(ckpt_shapes[k])} vs model {tuple(model_shapes[k])}"
                  for k in sorted(model_shapes) if k in ckpt_shapes
                  and tuple(ckpt_shapes[k]) != tuple(model_shapes[k])]
    if bad_shapes:
        problems.append(f"{len(bad_shapes)} shape mismatches: " + "; ".join(bad_shapes[:20])
                        + (" ..." if len(bad_shapes) > 20 else ""))
    if ckpt_dtypes:
        bad = sorted(f"{k} ({d})" for k, d in ckpt_dtypes.items() if k in model_shapes and d not in _ALLOWED_DTYPES)
        if bad:
            problems.append(f"{len(bad)} tensors are neither float32 nor bfloat16: " + ", ".join(bad[:10]))
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: " + ", ".join(unexpected[:20])
                        + (" ..." if len(unexpected) > 20 else ""))
    return problems, skipped, missing, unexpected


def load_flare_checkpoint(model: torch.nn.Module, path, strict: bool = True) -> LoadReport:
    """Load ``path`` into ``model`` (a ``FlareModel``) after checking it; return a ``LoadReport``.

    Raises FileNotFoundError (no file), ValueError (unknown format) or ``CheckpointError``
    (wrong kind, wrong shapes, dtypes other than float32 / bfloat16, missing or (with
    ``strict``) unexpected keys) -- in which case the model is left untouched.
    """
    sd = read_state_dict(path)
    model_sd = released_state_dict(model)
    problems, skipped, missing, unexpected = check_state_dict(
        {k: tuple(v.shape) for k, v in model_sd.items()}, {k: tuple(v.shape) for k, v in sd.items()},
        getattr(getattr(model, "cfg", None), "kind", "geometry"), {k: v.dtype for k, v in sd.items()}, strict)
    if problems:
        raise CheckpointError(f"cannot load {path} into {type(model).__name__}:\n- " + "\n- ".join(problems))
    with torch.no_grad():
        n = 0
        for k, target in model_sd.items():
            src = sd.get(k, sd.get(_PARTNER.get(k, ""), None))
            if src is not None:
                target.copy_(src)
                n += 1
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    return LoadReport(str(path), detect_kind(sd), n, dtypes, skipped, missing, unexpected)


def save_flare_checkpoint(model_or_sd, path, dtype: torch.dtype | None = None, wrap: bool = True,
                          model_config=None, image_size=None) -> Path:
    """Save a state dict (of a model, under the released names; or a dict as it is) to
    ``.safetensors`` or ``.pth``.

    ``dtype`` (float32 / bfloat16) casts floating tensors. ``.pth`` files hold
    ``{"model": sd}`` when ``wrap`` (the released layout), else the bare state dict. Alias
    names are written as separate copies (safetensors cannot store shared tensors).

    ``model_config`` (a ``FlareConfig`` or its ``to_dict()``) with ``image_size`` ``(H, W)``, the
    size the weights were trained at, writes a self-describing ``.pth``/``.pt`` file
    (``SHIPPED_FORMAT``, module docstring); both are checked before anything is written.
    """
    sd = released_state_dict(model_or_sd) if isinstance(model_or_sd, torch.nn.Module) else dict(model_or_sd)
    if dtype is not None and dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    meta = None
    if model_config is not None or image_size is not None:
        if model_config is None or image_size is None:
            raise ValueError("save_flare_checkpoint: model_config and image_size go together (a self-describing "
                             "checkpoint needs both)")
        if Path(path).suffix.lower() not in (".pth", ".pt") or not wrap:
            raise ValueError(f"save_flare_checkpoint: a self-describing checkpoint is a wrapped .pth/.pt file, "
                             f"got {Path(path).name} (wrap={wrap})")
        mc = model_config.to_dict() if isinstance(model_config, FlareConfig) else model_config
        meta = {"format": SHIPPED_FORMAT, "model_config": _plain(mc), "image_size": _plain(image_size)}
        checkpoint_info_from(meta, f"save_flare_checkpoint({Path(path).name})")     # refuse before writing
    out = {}
    for k, v in sd.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.clone().contiguous()
    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file
        save_file(out, str(path))
    elif path.suffix.lower() in (".pth", ".pt"):
        torch.save({**(meta or {}), "model": out} if wrap else out, path)
    else:
        raise ValueError(f"unknown checkpoint format {path.suffix!r} ({path}); use .safetensors or .pth")
    return path
