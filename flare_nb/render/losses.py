"""Losses on rendered images, for training the Gaussian stage (notebook 06); all differentiable.

FLARE's paper trains its Gaussians with MSE + a VGG perceptual loss between rendered and real
images, plus a depth loss against a monocular depth estimate; the release has none of them.

* :func:`mse`             mean squared error.
* :func:`ssim`            SSIM (Wang et al. 2004): 11-pixel Gaussian window, sigma 1.5,
                          C1 = (0.01 L)^2, C2 = (0.03 L)^2. Also the SSIM *metric* of
                          :mod:`flare_nb.eval.metrics` (one implementation).
* :func:`depth_loss`      masked L1/L2 depth loss, optionally scale-and-shift invariant.
* :class:`VGG16Features`  VGG16's convolutional trunk in plain torch (torchvision cannot be
                          installed beside this torch), loading torchvision's weight names.
* :class:`PerceptualLoss` feature-space L1 between VGG16 activations; needs a local weights
                          file (no weights are downloaded, ever).

Images are float ``(B, 3, H, W)`` in [0, 1] throughout.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# pixel losses
# ---------------------------------------------------------------------------------------------


def _check_pair(a: torch.Tensor, b: torch.Tensor, fn: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{fn}: images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim != 4:
        raise ValueError(f"{fn}: images must be (B, C, H, W), got {tuple(a.shape)}")


def mse(img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of two same-shape tensors (scalar). ``mask`` (broadcastable to them,
    bool or 0/1) restricts the mean to the masked entries."""
    if img1.shape != img2.shape:
        raise ValueError(f"mse: shapes differ, {tuple(img1.shape)} vs {tuple(img2.shape)}")
    d = (img1 - img2) ** 2
    if mask is None:
        return d.mean()
    m = mask.to(d.dtype).expand_as(d)
    return (d * m).sum() / m.sum().clamp_min(1)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian ``(size,)`` centred on the middle tap."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         data_range: float = 1.0, padding: str = "valid", reduction: str = "mean") -> torch.Tensor:
    """Structural similarity of ``img1, img2 (B, C, H, W)`` in [0, ``data_range``].

    Gaussian-weighted local statistics (separable ``window_size`` taps, ``sigma``), the
    standard constants ``C1 = (0.01 data_range)^2``, ``C2 = (0.03 data_range)^2`` and
    population (not sample) variances. ``padding="valid"`` averages the SSIM map only where the
    window lies inside the image (Wang et al.; equals ``skimage.metrics.structural_similarity(
    ..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``); ``"same"``
    zero-pads as the 3DGS training code does. ``reduction="mean"`` -> scalar, ``"none"`` ->
    ``(B,)`` (mean over channels and pixels per image). Differentiable; the SSIM *loss* is
    ``1 - ssim``. Notebooks 06 and 07.
    """
    _check_pair(img1, img2, "ssim")
    if padding not in ("valid", "same"):
        raise ValueError(f"ssim: padding must be 'valid' or 'same', got {padding!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"ssim: reduction must be 'mean' or 'none', got {reduction!r}")
    B, C, H, W = img1.shape
    if padding == "valid" and min(H, W) < window_size:
        raise ValueError(f"ssim: images of {H}x{W} are smaller than the {window_size}-pixel window")
    g = gaussian_window(window_size, sigma, img1.dtype, img1.device)
    pad = window_size // 2 if padding == "same" else 0
    wx = g.view(1, 1, 1, -1).expand(C, 1, 1, window_size)
    wy = g.view(1, 1, -1, 1).expand(C, 1, window_size, 1)

    def blur(x):
        x = F.conv2d(x, wx, padding=(0, pad), groups=C)
        return F.conv2d(x, wy, padding=(pad, 0), groups=C)

    mu1, mu2 = blur(img1), blur(img2)
    s11 = blur(img1 * img1) - mu1 ** 2
    s22 = blur(img2 * img2) - mu2 ** 2
    s12 = blur(img1 * img2) - mu1 * mu2
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    per_image = smap.flatten(1).mean(1)
    return per_image.mean() if reduction == "mean" else per_image


def _scale_shift(pred: torch.Tensor, target: torch.Tensor, m: torch.Tensor, eps: float = 1e-12):
    """Per image least-squares ``(s, t)`` minimising ``sum m (s pred + t - target)^2``; ``(B,)`` each."""
    a00 = (m * pred * pred).sum((-2, -1))
    a01 = (m * pred).sum((-2, -1))
    a11 = m.sum((-2, -1))
    b0 = (m * pred * target).sum((-2, -1))
    b1 = (m * target).sum((-2, -1))
    det = a00 * a11 - a01 * a01
    ok = det > eps * (a00 * a11).clamp_min(eps)
    safe = torch.where(ok, det, torch.ones_like(det))
    s = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    t = torch.where(ok, (-a01 * b0 + a00 * b1) / safe, b1 / a11)
    return s, t


def depth_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
               scale_invariant: bool = False, kind: str = "l1", return_aligned: bool = False):
    """Masked depth loss between ``pred`` and ``target``, both ``(B, H, W)`` or ``(H, W)``.

    ``mask`` bool of the same shape; ``None`` means ``target > 0`` (0 = no data, the workbook's
    depth convention). ``kind`` "l1" or "l2" (mean over the masked pixels of all images).

    ``scale_invariant=True`` is for a *monocular* target known only up to scale and shift
    (e.g. a relative depth network): per image, ``pred`` is first mapped to ``s pred + t`` with
    the least-squares ``(s, t)`` over the masked pixels (closed form, 2x2 normal equations;
    gradients flow through ``s`` and ``t``), then compared. If the target is inverse depth
    (disparity), pass ``1 / pred`` as ``pred``. With a constant ``pred`` the fit falls back to
    ``s = 0, t = mean(target)``. ``return_aligned=True`` also returns the aligned prediction.
    ValueError when an image has fewer than 2 masked pixels. Notebook 06.
    """
    if pred.shape != target.shape:
        raise ValueError(f"depth_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim not in (2, 3):
        raise ValueError(f"depth_loss: depths must be (B, H, W) or (H, W), got {tuple(pred.shape)}")
    if kind not in ("l1", "l2"):
        raise ValueError(f"depth_loss: kind must be 'l1' or 'l2', got {kind!r}")
    squeeze = pred.ndim == 2
    if squeeze:
        pred, target = pred[None], target[None]
        mask = None if mask is None else mask[None]
    if mask is None:
        mask = target > 0
    if mask.shape != pred.shape:
        raise ValueError(f"depth_loss: mask {tuple(mask.shape)} must match the depths {tuple(pred.shape)}")
    mask = mask.to(torch.bool)
    m = mask.to(pred.dtype)
    counts = m.sum((-2, -1))
    if (counts < 2).any():
        raise ValueError(f"depth_loss: every image needs at least 2 valid pixels; counts per image "
                         f"{counts.long().tolist()} (mask None means target > 0)")
    # zero the unmasked pixels so that NaN/inf there cannot leak into the loss or its gradient
    target = torch.where(mask, target, torch.zeros_like(target))
    pred = torch.where(mask, pred, torch.zeros_like(pred))
    if scale_invariant:
        s, t = _scale_shift(pred, target, m)
        pred = s[:, None, None] * pred + t[:, None, None]
    diff = (pred - target).abs() if kind == "l1" else (pred - target) ** 2
    loss = (diff * m).sum() / counts.sum()
    if return_aligned:
        return loss, (pred[0] if squeeze else pred)
    return loss


# ---------------------------------------------------------------------------------------------
# VGG16 perceptual loss
# ---------------------------------------------------------------------------------------------
# torchvision's vgg16().features: index -> (in, out) of each 3x3 conv; ReLU after each conv,
# 2x2 max-pool at 4, 9, 16, 23, 30.
VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
               14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
               26: (512, 512), 28: (512, 512)}
VGG16_POOLS = (4, 9, 16, 23, 30)
VGG16_TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
"""Layer name -> index in ``features`` of the ReLU whose output is tapped (LPIPS's five)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG16_HOWTO = (
    "Get torchvision's ImageNet VGG16 weights on a machine with internet access, e.g. "
    "https://download.pytorch.org/models/vgg16-397923af.pth (torchvision VGG16_Weights.IMAGENET1K_V1; "
    "any state_dict with 'features.N.weight'/'features.N.bias' keys works), copy the file here and "
    "pass its path (data/README.md lists where to put it).")


def _load_state_dict(path) -> dict:
    if path is None:
        raise FileNotFoundError("no VGG16 weights file given (weights_path=None). No weights can be "
                                "downloaded by this workbook. " + VGG16_HOWTO)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights file {path} does not exist. No weights can be "
                                f"downloaded by this workbook. " + VGG16_HOWTO)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} could not be read as a torch state_dict (weights_only=True): {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state_dict (a dict of tensors)")
    return sd


class VGG16Features(nn.Module):
    """VGG16's convolutional trunk (torchvision ``vgg16().features`` up to ``relu5_3``).

    ``VGG16Features(weights_path)`` loads a local state_dict (``.pth`` via
    ``torch.load(weights_only=True)``, or ``.safetensors``) with torchvision's names
    ``features.N.weight (out, in, 3, 3)`` / ``features.N.bias (out,)`` (the ``features.`` prefix
    may be absent; ``classifier.*`` keys are ignored). Every weight is checked for presence and
    shape. Parameters are frozen. ``forward(x (B, 3, H, W) already normalised) -> dict`` of the
    tapped activations named in ``taps`` (keys of :data:`VGG16_TAPS`). Notebook 06.
    """

    def __init__(self, weights_path, taps=tuple(VGG16_TAPS)):
        super().__init__()
        unknown = [t for t in taps if t not in VGG16_TAPS]
        if unknown or not taps:
            raise ValueError(f"unknown VGG16 taps {unknown}; choose from {list(VGG16_TAPS)}")
        self.taps = tuple(taps)
        self.last = max(VGG16_TAPS[t] for t in taps)
        self.convs = nn.ModuleDict({str(i): nn.Conv2d(cin, cout, 3, padding=1)
                                    for i, (cin, cout) in VGG16_CONVS.items() if i < self.last})
        sd = _load_state_dict(weights_path)
        sd = {k[len("features."):] if k.startswith("features.") else k: v for k, v in sd.items()}
        missing, wrong = [], []
        for i, conv in self.convs.items():
            for name, p in (("weight", conv.weight), ("bias", conv.bias)):
                key = f"{i}.{name}"
                if key not in sd:
                    missing.append(f"features.{key}")
                elif tuple(sd[key].shape) != tuple(p.shape):
                    wrong.append(f"features.{key}: expected {tuple(p.shape)}, got {tuple(sd[key].shape)}")
        if missing or wrong:
            raise ValueError(f"{weights_path} is not a torchvision VGG16 state_dict: "
                             + (f"missing {missing}; " if missing else "")
                             + (f"wrong shapes {wrong}" if wrong else "") + ". " + VGG16_HOWTO)
        with torch.no_grad():
            for i, conv in self.convs.items():
                conv.weight.copy_(sd[f"{i}.weight"].float())
                conv.bias.copy_(sd[f"{i}.bias"].float())
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> dict:
        out, want = {}, {VGG16_TAPS[t]: t for t in self.taps}
        for i in range(self.last + 1):
            if str(i) in self.convs:
                x = self.convs[str(i)](x)
            elif i in VGG16_POOLS:
                x = F.max_pool2d(x, 2)
            else:  # every other index of features is a ReLU
                x = F.relu(x)
                if i in want:
                    out[want[i]] = x
        return out


class PerceptualLoss(nn.Module):
    """VGG16 perceptual loss: ``sum_l w_l mean |phi_l(x) - phi_l(y)|`` over the taps ``layers``.

    ``PerceptualLoss(weights_path, layers=("relu1_2", ..., "relu5_3"), layer_weights=None)``;
    images ``(B, 3, H, W)`` in [0, 1], normalised with the ImageNet mean and std before VGG.
    ``weights_path`` is a local torchvision VGG16 state_dict (:class:`VGG16Features`); with
    ``None`` or a missing file it raises FileNotFoundError saying how to get one -- it never
    falls back to random weights. The loss is differentiable in both images; the network
    is frozen. Notebook 06.
    """

    def __init__(self, weights_path, layers=tuple(VGG16_TAPS), layer_weights=None):
        super().__init__()
        self.vgg = VGG16Features(weights_path, taps=layers)
        self.layers = tuple(layers)
        lw = [1.0] * len(layers) if layer_weights is None else list(layer_weights)
        if len(lw) != len(layers):
            raise ValueError(f"layer_weights has {len(lw)} entries for {len(layers)} layers")
        self.layer_weights = lw
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        _check_pair(img1, img2, "PerceptualLoss")
        if img1.shape[1] != 3:
            raise ValueError(f"PerceptualLoss: images must have 3 channels, got {img1.shape[1]}")
        f1 = self.vgg((img1 - self.mean) / self.std)
        f2 = self.vgg((img2 - self.mean) / self.std)
        return sum(w * (f1[n] - f2[n]).abs().mean() for n, w in zip(self.layers, self.layer_weights))
