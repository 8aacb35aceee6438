"""Training checkpoints: atomic save, safe load (``weights_only=True``), the trained model out
of a run folder, and the RNG state that makes a resumed run bit-identical (notebook 06)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from flare_nb.model.checkpoint import CheckpointError, checkpoint_info_from
from flare_nb.model.config import FlareConfig
from flare_nb.model.flare import FlareModel

__all__ = ["CHECKPOINT_NAME", "FORMAT", "save_checkpoint", "load_checkpoint", "load_trained_model", "rng_state", "set_rng_state"]


CHECKPOINT_NAME = "checkpoint.pt"


FORMAT = "flare_nb.train/1"


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` with ``torch.save`` atomically: to ``path.tmp<pid>`` first, flushed to disk,
    then ``os.replace``; a crash mid-write leaves the previous checkpoint untouched."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path) -> dict:
    """Load a training checkpoint (``weights_only=True``) with clear errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable training checkpoint ({type(e).__name__}: {e}); "
                         "it may be truncated -- delete it to start over") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{path} is not a flare_nb training checkpoint (expected format {FORMAT!r})")
    return ck


def load_trained_model(path, device="cpu"):
    """``FlareModel`` with the weights of a training checkpoint (eval mode), for notebooks;
    ``model.native_size`` is the run's ``data.size`` as ``(H, W)`` (None when the run has none)."""
    ck = load_checkpoint(path)
    mc = {k: tuple(v) if isinstance(v, list) else v for k, v in ck["model_config"].items()}
    model = FlareModel(FlareConfig(**mc))
    model.load_released_state_dict(ck["model"])
    try:
        native = checkpoint_info_from(ck, str(path)).image_size
    except CheckpointError:
        native = None
    model = model.to(device).eval()
    model.native_size = native
    return model


def rng_state() -> dict:
    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                    "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])
