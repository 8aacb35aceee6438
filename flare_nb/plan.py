"""``flare-nb plan``: memory and time of the released models, before downloading 5.7 GB.

Everything is computed here, on the user's machine, without the weights:

* parameters: the released network built on PyTorch's ``meta`` device (no memory, no weights);
* memory: the memory guard's estimator :func:`flare_nb.pipeline.estimate_memory_bytes`
  (``MEMORY_MODEL``, calibrated on the tiny model; ``benchmarks/bench_memory.py``), with the
  weights at 4 (fp32) or 2 (bf16) bytes per parameter and one 12-megapixel photo decoded;
* floating-point operations: one forward of the released network on ``meta`` tensors of the
  asked size under ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, attention and
  convolutions counted exactly from their shapes, attention as plain matrix products; RoPE
  and elementwise work left out). The
  input checks and RoPE's table size read tensor values, which meta tensors do not have, so
  they are bypassed for this count only. With ``--model nvs`` the geometry model that
  estimates the intrinsics runs first and is counted too;
* time: those operations divided by the rate this machine reaches NOW on a matrix product of
  the released model's MLP shape (``rows x 1024 @ 1024 x 4096``, :func:`matmul_rate`) in the
  precision the products run in (float32 on the CPU, also with bf16 weights, :mod:`flare_nb.bf16`;
  bf16 on CUDA, autocast). Attention, convolutions and memory-bound layers run below that rate, so the
  figure is a LOWER bound; the printed rate and operation count show how it was derived.
"""
from __future__ import annotations

import math
import time
from unittest import mock

import torch
from flare_nb.model import config as config_module
from flare_nb.model.flare import FlareModel
from flare_nb.model.reference import manifest_shapes
from flare_nb.pipeline import available_memory_bytes, estimate_memory_bytes

__all__ = ["count_flops", "matmul_rate", "run_plan", "ASSUMED_PHOTO_PIXELS"]

ASSUMED_PHOTO_PIXELS = 12e6          # one phone photo decoded (the memory guard counts the largest)
_CONFIG = {"geometry": "official_geometry", "nvs": "official_nvs"}


def _meta_model(cfg):

    with torch.device("meta"):
        return FlareModel(cfg).eval()


@torch.no_grad()
def count_flops(cfg, V: int, H: int, W: int, model=None) -> int:
    """Floating-point operations of one forward of ``cfg`` on ``V`` views of ``H x W`` (batch 1),
    counted on meta tensors (module docstring)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    import flare_nb.model.blocks as blocks
    import flare_nb.model.flare as flare

    m = _meta_model(cfg) if model is None else model
    object.__setattr__(m, "check_images", lambda images: images)   # reads values; shapes were checked
    x = torch.empty(1, V, 3, H, W, device="meta")
    kw = {"intrinsics": torch.empty(1, V, 4, device="meta")} if cfg.kind == "nvs" else {}
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)      # the fused MHA op is not counted; its parts are
    try:
        with mock.patch.object(blocks, "apply_rope2d", lambda t, pos, base: t), \
                mock.patch.object(flare, "intrinsics_vector", lambda k, B, V: k), \
                sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            m(x, **kw)
    finally:
        m.__dict__.pop("check_images", None)
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(fc.get_total_flops())


def matmul_rate(max_rows: int, dtype: torch.dtype, device: str = "cpu", budget_s: float = 0.25) -> tuple[float, int]:
    """``(operations per second, rows)`` of ``(rows x 1024) @ (1024 x 4096)`` in ``dtype`` on
    ``device``: rows start at 16 and double (up to ``max_rows``) while one product takes less
    than ``budget_s``; the rate is the best of two timed runs at the last size. (On CPUs without
    bfloat16 instructions a bf16 product is far slower than float32; this shows it.)"""
    g = torch.Generator(device="cpu").manual_seed(0)
    b = torch.randn(1024, 4096, generator=g).to(device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = 16
    while True:
        a = torch.randn(rows, 1024, generator=g).to(device, dtype)
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            a @ b
            sync()
            best = min(best, time.perf_counter() - t0)
        if best >= budget_s or rows * 2 > max_rows:
            return 2.0 * rows * 1024 * 4096 / best, rows
        rows *= 2


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def run_plan(views: int, size, dtype: str = "fp32", model: str = "geometry", device: str = "cpu") -> str:
    """The text ``flare-nb plan`` prints. ``size`` = ``(W, H)`` (checked multiples of 64).
    ValueError naming the option for bad values."""

    if isinstance(views, bool) or not isinstance(views, int) or not 2 <= views <= 8:
        raise ValueError(f"--views must be an integer from 2 to 8 (FLARE is trained on 2-8 views), got {views!r}")
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    if model not in _CONFIG:
        raise ValueError(f"--model must be geometry or nvs, got {model!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    W, H = size
    tdtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    pbytes = tdtype.itemsize
    cfg = getattr(config_module, _CONFIG[model])()
    net = _meta_model(cfg)
    n_params = sum(p.numel() for p in net.parameters())
    mem = estimate_memory_bytes(cfg, n_params, views, H, W, device, ASSUMED_PHOTO_PIXELS, pbytes)
    flops = count_flops(cfg, views, H, W, net)
    del net
    parts = [f"{_CONFIG[model]} {flops / 1e12:.2f} TFLOP"]
    if model == "nvs":
        geo = config_module.official_geometry()
        geo_flops = count_flops(geo, views, H, W)
        flops += geo_flops
        parts.append(f"official_geometry (intrinsics) {geo_flops / 1e12:.2f} TFLOP")
    N = (H // cfg.patch_size) * (W // cfg.patch_size)
    file = "NVS.pth" if model == "nvs" else "geometry_pose.pth"

    shapes = manifest_shapes(model)
    file_bytes = 4 * sum(math.prod(s) for s in shapes.values())
    L = [f"flare-nb plan: released {model} model ({file}), {views} views of {W}x{H}, {dtype} weights, {device}",
         f"  download:    {file} {file_bytes / 1e9:.2f} GB (float32, {len(shapes)} tensors, "
         "data/flare_reference/manifest_*.json)",
         f"  parameters:  {n_params / 1e9:.3f} G built ({n_params * pbytes / 1e9:.2f} GB as {dtype} in memory; "
         "the file also holds modules the release never calls)"
         + ("; plus geometry_pose.pth (same size) to estimate the intrinsics" if model == "nvs" else ""),
         f"  memory:      about {mem / 1e9:.1f} GB peak (the memory guard's estimate, "
         f"flare_nb.pipeline.MEMORY_MODEL, one {ASSUMED_PHOTO_PIXELS / 1e6:.0f}-megapixel photo decoded"
         + ("; loading peaks at the float32 weights, rounded to bf16 after loading" if dtype == "bf16" else "")
         + ")"]
    have = None
    try:
        have = available_memory_bytes(device) if device == "cpu" or torch.cuda.is_available() else None
    except RuntimeError:
        have = None
    if have is not None:
        verdict = "fits" if mem <= have else "does NOT fit: use fewer views, a smaller --size or --dtype bf16"
        L.append(f"               {have / 1e9:.1f} GB free on this {device} now: {verdict}")
    L.append(f"  operations:  {flops / 1e12:.2f} TFLOP per run ({'; '.join(parts)}; counted on meta tensors "
             f"with torch's FlopCounterMode, {views} x {N} tokens)")
    if device == "cuda" and not torch.cuda.is_available():
        L.append("  time:        not measured: no CUDA GPU is visible here; operations / your GPU's dense "
                 f"{dtype} rate is a lower bound")
    else:
        # the precision the products run in: float32 on the CPU (bf16 weights are widened layer by
        # layer, flare_nb.bf16), bf16 on CUDA (autocast, whatever the weights)
        cdtype, cname = (torch.float32, "fp32") if device == "cpu" else (torch.bfloat16, "bf16")
        rate, rows = matmul_rate(views * N, cdtype, device)
        L.append(f"  time:        at least {_duration(flops / rate)} for the network (operations / {rate / 1e9:.3g} "
                 f"GFLOP/s, the rate this {device} reaches now on a {rows}x1024 @ 1024x4096 {cname} matrix "
                 "product; attention, convolutions and memory-bound layers are slower), plus loading the weights "
                 "and PnP" + ("; bf16 weights compute in float32 on the CPU: same time, half the weight memory"
                              if dtype == "bf16" and device == "cpu" else ""))
    return "\n".join(L)
