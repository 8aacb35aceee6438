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

from flare_nb.model.flare import omitted_key_prefixes
from flare_nb.model.reference import ALIASES

__all__ = ["CheckpointError", "LoadReport", "read_state_dict", "detect_kind", "check_state_dict",
           "load_flare_checkpoint", "save_flare_checkpoint", "released_state_dict", "NVS_ONLY_KEYS", "GEOMETRY_ONLY_KEYS"]

#: key prefixes that only the released NVS model has / only the geometry model has
NVS_ONLY_KEYS = ("patch_embed_fine.", "decoder_embed_stage2.", "decoder_embed_fxfycxcy.")
GEOMETRY_ONLY_KEYS = ("patch_embed_coarse.",)
_ALLOWED_DTYPES = (torch.float32, torch.bfloat16)
_PARTNER = {**{a: b for a, b in ALIASES}, **{b: a for a, b in ALIASES}}


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


def _torch_load_tensors(path: Path):
    """``torch.load(weights_only=True)`` with one clear ``CheckpointError`` per way a file can be
    refused (never advising to load it unsafely); torch's own warnings are not shown."""
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


def save_flare_checkpoint(model_or_sd, path, dtype: torch.dtype | None = None, wrap: bool = True) -> Path:
    """Save a state dict (of a model, under the released names; or a dict as it is) to
    ``.safetensors`` or ``.pth``.

    ``dtype`` (float32 / bfloat16) casts floating tensors. ``.pth`` files hold
    ``{"model": sd}`` when ``wrap`` (the released layout), else the bare state dict. Alias
    names are written as separate copies (safetensors cannot store shared tensors).
    """
    sd = released_state_dict(model_or_sd) if isinstance(model_or_sd, torch.nn.Module) else dict(model_or_sd)
    if dtype is not None and dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
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
        torch.save({"model": out} if wrap else out, path)
    else:
        raise ValueError(f"unknown checkpoint format {path.suffix!r} ({path}); use .safetensors or .pth")
    return path
