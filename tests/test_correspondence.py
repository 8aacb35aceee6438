"""Correspondences from exact depth and cameras, and the matching loss (flare_nb.train.correspondence)."""
import pytest
import torch

from flare_nb.train.correspondence import correspondences, match_loss
from flare_nb.scenes.synthetic import make_scene


@pytest.fixture(scope="module")
def scene():
    return make_scene(3, 3, 64, "orbit", orbit_arc=(20, 60))


def test_corresponding_pixels_show_the_same_colour(scene):
    img = scene.images.reshape(3, 3, -1)
    for i in (1, 2):
        p, q = correspondences(scene.depth, scene.K, scene.c2w, i, 0)
        assert p.numel() > 0.15 * 64 * 64
        same = (img[i][:, p] - img[0][:, q]).abs().mean()
        shuffled = (img[i][:, p] - img[0][:, q[torch.randperm(q.numel(), generator=torch.Generator().manual_seed(0))]]).abs().mean()
        assert same < 0.3 * shuffled, (same, shuffled)


def test_a_view_matches_itself_pixel_for_pixel(scene):
    p, q = correspondences(scene.depth, scene.K, scene.c2w, 0, 0)
    assert torch.equal(p, q) and p.numel() == int((scene.depth[0] > 0).sum())


def test_occluded_points_are_dropped(scene):
    before, _ = correspondences(scene.depth, scene.K, scene.c2w, 1, 0)
    depth = scene.depth.clone()
    depth[0] = torch.where(depth[0] > 0, depth[0] * 0.5, depth[0])      # view 0 now sees a closer surface
    p, _ = correspondences(depth, scene.K, scene.c2w, 1, 0)
    assert p.numel() <= 0.01 * before.numel(), (p.numel(), before.numel())


def test_match_loss_prefers_consistent_descriptors_and_has_gradients(scene):
    from flare_nb.scenes.synthetic import pointmaps

    world = pointmaps(scene, "world")                                    # (V, H, W, 3): same point, same value
    freqs = torch.tensor([1.0, 2.0, 4.0, 8.0])
    ang = world[..., None] * freqs                                        # (V, H, W, 3, 4)
    good = torch.cat([ang.sin(), ang.cos()], -1).flatten(-2)[None]       # (1, V, H, W, 24)
    bad = torch.randn(good.shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    args = (scene.depth[None], scene.K[None], scene.c2w[None])
    g = torch.Generator().manual_seed(1)
    l_good = match_loss(good, *args, generator=g)
    l_bad = match_loss(bad, *args, generator=torch.Generator().manual_seed(1))
    assert l_good < 0.5 * l_bad
    l_bad.backward()
    assert bad.grad.abs().sum() > 0
    empty = match_loss(bad, torch.zeros_like(scene.depth)[None], scene.K[None], scene.c2w[None])
    assert empty.item() == 0 and empty.requires_grad
