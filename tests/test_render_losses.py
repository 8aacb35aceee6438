"""flare_nb.render.losses: MSE, SSIM (vs. skimage and known answers), depth loss, VGG16 perceptual loss."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flare_nb.render.losses import (VGG16_CONVS, PerceptualLoss, VGG16Features, depth_loss,
                                    gaussian_window, mse, ssim)


def _imgs(B=2, H=32, W=40, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(B, 3, H, W, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(B, 3, H, W, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a.to(dtype), b.to(dtype)


# ------------------------------------------------------------------------------- mse / ssim
def test_mse_known_and_masked():
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 2.0)
    assert mse(a, b).item() == 4.0
    b[..., :2] = 0
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 2:] = True
    assert mse(a, b, mask).item() == 4.0 and mse(a, b, ~mask).item() == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        mse(a, b[..., :3])


def test_gaussian_window():
    g = gaussian_window(11, 1.5, torch.float64)
    assert g.shape == (11,) and abs(g.sum().item() - 1) < 1e-12 and g.argmax().item() == 5
    assert g[5] / g[4] == pytest.approx(np.exp(1 / (2 * 1.5 ** 2)))


def test_ssim_identical_and_constant_images():
    a, _ = _imgs()
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    # uniform images: variances vanish, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    m1, m2, c1 = 0.2, 0.7, 0.01 ** 2
    x, y = torch.full((1, 3, 16, 16), m1, dtype=torch.float64), torch.full((1, 3, 16, 16), m2, dtype=torch.float64)
    assert ssim(x, y).item() == pytest.approx((2 * m1 * m2 + c1) / (m1 ** 2 + m2 ** 2 + c1), rel=1e-10)


def test_ssim_valid_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    a, b = _imgs(B=2, dtype=torch.float64)
    ours = ssim(a, b, reduction="none")
    assert ours.shape == (2,)
    for i in range(2):
        ref = skm.structural_similarity(a[i].numpy(), b[i].numpy(), win_size=11, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-9)


def test_ssim_same_padding_matches_zero_padded_filter():
    from scipy.ndimage import correlate
    a, b = _imgs(B=1, H=20, W=24, dtype=torch.float64)
    g = gaussian_window(11, 1.5, torch.float64).numpy()
    k = np.outer(g, g)

    def f(x):
        return correlate(x, k, mode="constant", cval=0.0)

    vals = []
    for c in range(3):
        x, y = a[0, c].numpy(), b[0, c].numpy()
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        C1, C2 = 1e-4, 9e-4
        vals.append(((2 * mx * my + C1) * (2 * sxy + C2) / ((mx ** 2 + my ** 2 + C1) * (sxx + syy + C2))).mean())
    assert ssim(a, b, padding="same").item() == pytest.approx(np.mean(vals), abs=1e-10)


def test_ssim_gradient():
    a, b = _imgs(B=1, H=12, W=13, dtype=torch.float64)
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ssim(x, b), (a,), eps=1e-6, atol=1e-6, fast_mode=True)
    # a gradient step on 1 - ssim raises the SSIM
    a2, b2 = _imgs(B=1)
    x = a2.clone().requires_grad_(True)
    (1 - ssim(x, b2)).backward()
    with torch.no_grad():
        assert ssim(x - 0.5 * x.grad / x.grad.abs().max(), b2) > ssim(a2, b2)


def test_ssim_errors():
    a, b = _imgs()
    with pytest.raises(ValueError, match="same shape"):
        ssim(a, b[:, :, :-1])
    with pytest.raises(ValueError, match="smaller than the 11-pixel window"):
        ssim(a[..., :8, :8], b[..., :8, :8])
    with pytest.raises(ValueError, match="padding must be"):
        ssim(a, b, padding="reflect")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ssim(a[0], b[0])


# ------------------------------------------------------------------------------- depth
def test_depth_loss_plain_and_mask_default():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.5, 2.0], [0.0, 5.0]])  # 0 = no data
    assert depth_loss(pred, target).item() == pytest.approx((0.5 + 0 + 1) / 3)
    assert depth_loss(pred, target, kind="l2").item() == pytest.approx((0.25 + 0 + 1) / 3)
    full = torch.ones_like(pred, dtype=torch.bool)
    assert depth_loss(pred, target, full).item() == pytest.approx((0.5 + 0 + 3 + 1) / 4)


def test_depth_loss_scale_invariant_recovers_scale_shift():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 8, 9, generator=g, dtype=torch.float64) + 0.5
    target = torch.stack([2.5 * pred[0] + 0.3, 0.4 * pred[1] - 0.1])
    mask = torch.rand(2, 8, 9, generator=g) > 0.3
    target_bad = torch.where(mask, target, torch.full_like(target, float("nan")))  # NaN outside the mask
    loss, aligned = depth_loss(pred, target_bad, mask, scale_invariant=True, return_aligned=True)
    assert loss.item() < 1e-12
    torch.testing.assert_close(aligned[mask], target[mask])
    assert depth_loss(pred, target, mask).item() > 0.1  # not invariant without the option
    # gradients flow through the closed-form fit and are finite
    p = pred.clone().requires_grad_(True)
    noisy = target + 0.05 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: depth_loss(x, noisy, mask, scale_invariant=True, kind="l2"), (p,))


def test_depth_loss_constant_pred_and_errors():
    pred = torch.full((4, 4), 2.0)
    target = torch.arange(1.0, 17.0).view(4, 4)
    loss, aligned = depth_loss(pred, target, scale_invariant=True, return_aligned=True)
    torch.testing.assert_close(aligned, torch.full((4, 4), target.mean().item()))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="differ in shape"):
        depth_loss(pred, target[:3])
    with pytest.raises(ValueError, match="at least 2 valid pixels"):
        depth_loss(pred, torch.zeros(4, 4))
    with pytest.raises(ValueError, match="kind must be"):
        depth_loss(pred, target, kind="huber")


# ------------------------------------------------------------------------------- VGG perceptual
def _vgg_state_dict(seed=0, prefix="features."):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (cin, cout) in VGG16_CONVS.items():
        sd[f"{prefix}{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        sd[f"{prefix}{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    sd["classifier.0.bias"] = torch.zeros(4096)  # a full torchvision state_dict also holds these
    return sd


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("vgg") / "vgg16_random.pth"
    torch.save(_vgg_state_dict(), p)
    return p


def test_perceptual_needs_weights_and_says_how():
    with pytest.raises(FileNotFoundError, match="weights_path=None.*downloaded.*vgg16-397923af.pth"):
        PerceptualLoss(None)
    with pytest.raises(FileNotFoundError, match=r"no_such\.pth does not exist.*downloaded"):
        PerceptualLoss("/nonexistent/no_such.pth")


def test_perceptual_wrong_shapes_and_missing_keys(tmp_path):
    sd = _vgg_state_dict()
    sd["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    del sd["features.28.bias"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*missing \['features\.28\.bias'\].*features\.5\.weight: "
                                         r"expected \(128, 64, 3, 3\), got \(128, 32, 3, 3\)"):
        PerceptualLoss(tmp_path / "bad.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state_dict"):
        PerceptualLoss(tmp_path / "list.pth")


def test_vgg_features_follow_the_weights(vgg_file):
    sd = _vgg_state_dict()
    net = VGG16Features(vgg_file)
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    out = net(x)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"relu1_2": (1, 64, 32, 48), "relu2_2": (1, 128, 16, 24), "relu3_3": (1, 256, 8, 12),
                      "relu4_3": (1, 512, 4, 6), "relu5_3": (1, 512, 2, 3)}
    # relu1_2 and relu2_2 by hand from the file's tensors
    h = F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], padding=1))
    h = F.relu(F.conv2d(h, sd["features.2.weight"], sd["features.2.bias"], padding=1))
    torch.testing.assert_close(out["relu1_2"], h)
    h = F.max_pool2d(h, 2)
    h = F.relu(F.conv2d(h, sd["features.5.weight"], sd["features.5.bias"], padding=1))
    h = F.relu(F.conv2d(h, sd["features.7.weight"], sd["features.7.bias"], padding=1))
    torch.testing.assert_close(out["relu2_2"], h)
    assert not any(p.requires_grad for p in net.parameters())


def test_perceptual_loss_values_and_gradient(vgg_file, tmp_path):
    a, b = _imgs(B=1, H=32, W=32)
    loss = PerceptualLoss(vgg_file)
    assert loss(a, a).item() == 0.0
    x = a.clone().requires_grad_(True)
    val = loss(x, b)
    assert val.item() > 0
    val.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # keys without the "features." prefix (torchvision's vgg16().features.state_dict()) and safetensors
    from safetensors.torch import save_file
    sd = {k: v for k, v in _vgg_state_dict(prefix="").items() if not k.startswith("classifier")}
    save_file(sd, str(tmp_path / "vgg.safetensors"))
    assert PerceptualLoss(tmp_path / "vgg.safetensors")(a, b).item() == pytest.approx(val.item(), rel=1e-5)
    one = PerceptualLoss(vgg_file, layers=("relu1_2",), layer_weights=(2.0,))
    assert one.vgg.last == 3 and len(one.vgg.convs) == 2
    with pytest.raises(ValueError, match="unknown VGG16 taps"):
        PerceptualLoss(vgg_file, layers=("relu9_9",))
