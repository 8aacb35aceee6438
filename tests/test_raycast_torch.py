"""Tests of flare_nb.scenes.raycast_torch and the synthetic scenes' torch ray-casting backend."""

import math

import numpy as np
import pytest
import torch

from flare_nb.scenes import synthetic
from flare_nb.scenes.raycast_torch import cast_rays
from flare_nb.scenes.synthetic import make_scene, pointmaps, resolve_raycast

EPS32 = float(np.finfo(np.float32).eps)
SEEDS = (0, 1, 2)


# ----------------------------------------------------------------------------- the caster alone


def _one_triangle():
    V = np.array([[0.0, 0.0, 5.0], [2.0, 0.0, 5.0], [0.0, 2.0, 5.0]], np.float32)
    return V, np.array([[0, 1, 2]], np.int32)


def test_single_triangle_hits_misses_and_both_faces():
    V, F = _one_triangle()
    o = np.array([[0.5, 0.5, 0.0], [1.5, 1.5, 0.0], [0.5, 0.5, 10.0], [0.5, 0.5, 0.0], [0.5, 0.5, 6.0]], np.float32)
    d = np.array([[0, 0, 1], [0, 0, 1], [0, 0, -2], [0, 0, -1], [0, 0, 1]], np.float32)
    t, k = cast_rays(V, F, o, d)
    # inside from the front; outside the hypotenuse; inside from the back (t in units of |d| = 2);
    # pointing away; behind the origin
    assert t[0] == 5.0 and k[0] == 0
    assert math.isinf(t[1]) and k[1] == -1
    assert t[2] == 2.5 and k[2] == 0
    assert math.isinf(t[3]) and k[3] == -1 and math.isinf(t[4]) and k[4] == -1


def test_nearest_of_stacked_triangles_and_ties_go_to_the_lowest_index():
    V, F = _one_triangle()
    V = np.concatenate([V, V + [0, 0, 2], V + [0, 0, -1], V + [0, 0, -1]]).astype(np.float32)
    F = np.concatenate([F, F + 3, F + 6, F + 9])                    # z = 5, 7, 4, 4 (two equal)
    o = np.array([[0.3, 0.3, 0.0]], np.float32)
    d = np.array([[0, 0, 1]], np.float32)
    for groups in (None, [(0, 1), (1, 2), (2, 3), (3, 4)], [(0, 2), (2, 4)]):
        t, k = cast_rays(V, F, o, d, groups=groups)
        assert t[0] == 4.0 and k[0] == 2, groups


def _scene_mesh(seed, mode):
    layout, c2w, fov = synthetic._layout_and_cameras(seed, 2, mode, None, synthetic.ORBIT_ARC)
    verts, tris, groups, off, n = [], [], [], 0, 0
    for p in layout["parts"]:
        v = p.vertices()
        t = synthetic._unit_mesh(p.kind)[1]
        verts.append(v)
        tris.append(t + off)
        groups.append((n, n + len(t)))
        off, n = off + len(v), n + len(t)
    return np.concatenate(verts).astype(np.float32), np.concatenate(tris), groups, c2w


@pytest.mark.parametrize("mode", synthetic.MODES)
def test_results_do_not_depend_on_chunking_grouping_or_dtype(mode):
    V, F, groups, c2w = _scene_mesh(4, mode)
    g = torch.Generator().manual_seed(0)
    o = torch.from_numpy(c2w[:, :3, 3]).float().repeat_interleave(300, 0)
    d = torch.randn(len(o), 3, generator=g)
    t, k = cast_rays(V, F, o, d, groups=groups)
    assert torch.isfinite(t).float().mean() > 0.3                       # the rays do hit things
    for kw in (dict(max_pairs=1000), dict(groups=None), dict(groups=None, max_pairs=5000)):
        t2, k2 = cast_rays(V, F, o, d, **{"groups": groups, **kw})
        assert torch.equal(t, t2) and torch.equal(k, k2), kw
    t64, _ = cast_rays(V, F, o, d, groups=groups, dtype=torch.float64)
    hit = torch.isfinite(t) & torch.isfinite(t64)
    scale = o.norm(dim=1) + t.clamp(max=1e3) * d.norm(dim=1)
    assert (torch.isfinite(t) != torch.isfinite(t64)).float().mean() < 0.002
    bad = (t.double() - t64).abs() > 32 * EPS32 * scale.double()
    assert bad[hit].float().mean() < 0.002


def test_bad_arguments_name_the_problem():
    V, F = _one_triangle()
    o = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="origins and directions"):
        cast_rays(V, F, o, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="triangle indices"):
        cast_rays(V, F + 5, o, o)
    with pytest.raises(ValueError, match="dtype"):
        cast_rays(V, F, o, o, dtype=torch.float16)
    with pytest.raises(ValueError, match="raycast backend"):
        resolve_raycast("embree")


# ----------------------------------------------------------------------------- against open3d


def test_unit_meshes_are_open3ds():
    o3d = pytest.importorskip("open3d")
    g = o3d.geometry.TriangleMesh
    ref = {"sphere": g.create_sphere(radius=1.0, resolution=20),
           "box": g.create_box(2.0, 2.0, 2.0).translate((-1.0, -1.0, -1.0)),
           "cylinder": g.create_cylinder(radius=1.0, height=2.0, resolution=40, split=1),
           "torus": g.create_torus(torus_radius=1.0, tube_radius=0.35, radial_resolution=40, tubular_resolution=20)}
    for kind, m in ref.items():
        v, t = synthetic._unit_mesh(kind)
        assert np.array_equal(v, np.asarray(m.vertices)) and np.array_equal(t, np.asarray(m.triangles)), kind


def _silhouette(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood holds more than one id (object / sky boundaries)."""
    m = torch.nn.functional.pad(mask[:, None].double(), (1, 1, 1, 1), mode="replicate")
    win = torch.nn.functional.unfold(m, 3).view(mask.shape[0], 9, *mask.shape[1:])
    return (win != win[:, 4:5]).any(1)


@pytest.fixture(scope="module")
def pairs():
    """(open3d, torch) renderings of 3 seeds x both modes, 4 views of 64x64."""
    pytest.importorskip("open3d")
    out = {}
    for mode in synthetic.MODES:
        for seed in SEEDS:
            out[mode, seed] = (make_scene(seed, 4, 64, mode, return_masks=True, raycast="open3d", n_threads=1),
                               make_scene(seed, 4, 64, mode, return_masks=True, raycast="torch"))
    return out


def agreement(a, ma, b, mb) -> dict:
    """Numbers of one comparison (also printed by benchmarks/bench_raycast.py)."""
    n = ma.numel()
    sil = _silhouette(ma)
    both = (a.depth > 0) & (b.depth > 0) & (ma == mb)
    # float32 depth: t = e2.q / det accumulates a few roundings of coordinates of size |o| + t|d|
    # (|d| >= 1: camera-frame z = 1); 32 ulps of that scale bounds it away from grazing angles
    scale = a.c2w[:, None, None, :3, 3].norm(dim=-1) + 2 * a.depth
    off = (a.depth - b.depth).abs() > 32 * EPS32 * scale
    return dict(pixels=n, mask_diff=int((ma != mb).sum()), mask_diff_off_silhouette=int(((ma != mb) & ~sil).sum()),
                hit_diff=int(((a.depth > 0) != (b.depth > 0)).sum()), both_hit=int(both.sum()),
                depth_off=int((off & both).sum()),
                max_rel_depth=float(((a.depth - b.depth).abs() / a.depth.clamp(min=1e-9))[both].max()),
                max_colour=float((a.images - b.images).abs().amax(1)[both[:, None].expand_as(a.images)[:, 0]].max()))


@pytest.mark.parametrize("mode", synthetic.MODES)
def test_torch_backend_agrees_with_open3d(pairs, mode):
    for seed in SEEDS:
        (a, ma), (b, mb) = pairs[mode, seed]
        assert torch.equal(a.K, b.K) and torch.equal(a.c2w, b.c2w)
        r = agreement(a, ma, b, mb)
        # hit / miss and which object: the same except at a few silhouette pixels
        assert r["mask_diff"] <= 0.002 * r["pixels"], (seed, r)
        assert r["mask_diff_off_silhouette"] <= 0.0005 * r["pixels"], (seed, r)
        # depth within the float32 bound wherever both hit the same object, but for a few
        # grazing rays
        assert r["depth_off"] <= 0.001 * r["both_hit"], (seed, r)
        # colour is a function of the hit point: equal up to the same rounding
        assert r["max_colour"] < 1e-3, (seed, r)


# ----------------------------------------------------------------------------- exact geometry, torch backend


def test_torch_backend_same_seed_bitwise_identical():
    a, ma = make_scene(5, 3, 64, "orbit", return_masks=True, raycast="torch")
    b, mb = make_scene(5, 3, 64, "orbit", return_masks=True, raycast="torch")
    for x, y in [(a.images, b.images), (a.depth, b.depth), (ma, mb)]:
        assert torch.equal(x, y)


def test_torch_backend_ground_points_lie_on_the_ground_plane():
    s, m = make_scene(8, 4, 64, "orbit", return_masks=True, raycast="torch")
    X = pointmaps(s, "world").double()
    assert (m == 1).sum() > 0.1 * m.numel()
    assert X[m == 1][:, 2].abs().max() < 2e-4


def test_torch_backend_room_points_lie_on_the_six_room_planes():
    s, m = make_scene(8, 4, 64, "forward", return_masks=True, raycast="torch")
    X = pointmaps(s, "world").double()[m == 1]
    lo, hi = X.min(0).values, X.max(0).values
    dist = torch.cat([(X - lo).abs(), (X - hi).abs()], 1).min(1).values
    assert dist.max() < 1e-3
    assert lo[2].abs() < 1e-4


@pytest.mark.parametrize("mode", synthetic.MODES)
def test_torch_backend_depth_reprojects_between_views(mode):
    from test_synthetic import reprojection

    s = make_scene(21, 4, 64, mode, raycast="torch")
    for i, j in [(0, 1), (1, 0)]:
        z, dj, _, _, ok = reprojection(s, i, j)
        rel = (z - dj).abs() / dj
        visible = ok & (rel < 0.02)
        assert visible.sum() > 0.2 * 64 * 64, (i, j)
        assert rel[visible].median() < 1e-3, (i, j, rel[visible].median())


def test_dataset_takes_the_backend():
    ds = synthetic.SyntheticDataset([3], 2, 64, ["forward"], raycast="torch")
    assert ds.raycast == "torch"
    assert torch.equal(ds[0].depth, make_scene(3, 2, 64, "forward", raycast="torch").depth)
