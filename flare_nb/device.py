"""Device choice and seeding (used by every notebook).

``DEVICE="auto"`` picks CUDA when a GPU is visible, else the CPU. On CUDA the model runs
under bf16 autocast; on the CPU everything is float32.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

_VALID = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N" | torch.device`` into a ``torch.device``.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when CUDA is asked for
    but no GPU is visible (so a notebook never falls back silently to a slower device
    the user did not choose).
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device).strip().lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if not (name in _VALID or name.startswith("cuda:")):
            raise ValueError(f"unknown device {device!r}: use one of 'auto', 'cpu', 'cuda' or 'cuda:N'")
        dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but no CUDA GPU is visible; use DEVICE='auto' or 'cpu'")
    return dev


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA (as the released model runs), ``None`` (plain float32) on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else None


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)
