"""Procedural multi-view scenes with exact ground truth (notebooks 00 and 06).

A scene is a handful of textured shapes (spheres / ellipsoids, boxes, cylinders, tori) on a
ground plane (``mode="orbit"``, object-centric like CO3D) or inside a room box
(``mode="forward"``, a camera walking through a room like RealEstate10K). It is ray cast
-- all views in one call -- with open3d's Embree ``RaycastingScene`` on the CPU, or where open3d
is missing (or when asked: ``raycast="torch"``) with the torch ray caster of
:mod:`flare_nb.scenes.raycast_torch` on the CPU or a GPU, into

* ``images`` float32 ``(V, 3, H, W)`` in [0, 1],
* ``depth``  float32 ``(V, H, W)`` z-depth along the optical axis, 0 where a ray hits nothing
  (the sky of orbit scenes),
* ``K``      float32 ``(V, 3, 3)``, OpenCV pixel centres (top-left pixel centre = (0, 0)),
* ``c2w``    float32 ``(V, 4, 4)`` camera-to-world, OpenCV axes (x right, y down, z forward),
* optionally per-pixel object ids ``masks`` int64 ``(V, H, W)``: 0 = nothing hit (sky),
  1 = the environment (ground plane or room walls / floor / ceiling), ``2 + k`` = object ``k``.

The world frame has **+z up** and the ground / floor at ``z = 0``; units are metres.

The camera distributions (per scene; a pose predictor must beat the blind priors of
:mod:`flare_nb.eval.priors` on them, which know these distributions but not the images):

* orbit: 2-5 objects (boxes 50 %, cylinders 20 %, spheres and tori 15 % each; aperiodic noise
  or spots textures 80 %, checkers and stripes 20 %) on a noise- or spots-textured ground;
  cameras on a ring at 1.25-1.7 times the objects' extent, elevation 12-40 degrees, the azimuth
  span from the first to the last view drawn uniformly in ``orbit_arc`` (default 40-200
  degrees; the views are evenly spread over it) with 4-degree jitter of azimuth and elevation,
  3 degrees of roll, fov 40-55 degrees, all looking at the objects' centre;
* forward: a room 7-11 x 4.5-7 x 2.6-3.3 m with 4-9 objects; a walk of 0.25-0.55 m per view
  whose heading turns by up to 12 degrees per view, the camera looking up to 25 degrees off its
  direction of motion, small jitter of yaw, pitch, roll and height, fov 55-75 degrees.

Colour is a function of the 3D hit point only: each object (and each room face) gets its
own procedural texture -- value noise, checker, stripes or spots, always mixed with noise --
evaluated in the object's own rigid frame, then Lambertian shading from one fixed point
light plus ambient. Nothing depends on the viewing direction, so the same 3D point has the
same colour in every view (only the sky colour depends on the ray direction, like any point
at infinity). Same seed -> bitwise identical output; the layout and textures of a seed do
not depend on ``n_views`` or ``size``.

Public API: :func:`make_scene`, :func:`pointmaps`, :class:`SyntheticDataset`,
:func:`collate_scenes`.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flare_nb.cameras import (intrinsics_from_focal, invert_pose, pixel_grid,
                              transform_points, unproject_depth)
from flare_nb.scenes.preprocess import check_size
from flare_nb.scenes.scene import Scene
from flare_nb.scenes.raycast_torch import cast_rays

__all__ = ["MODES", "RAYCAST_BACKENDS", "resolve_raycast", "make_scene", "make_cameras", "pointmaps", "SyntheticDataset", "collate_scenes"]

MODES = ("orbit", "forward")
HELD_OUT_SEED_START = 1_000_000   # seeds >= this are never used for training (evaluation only)
ORBIT_ARC = (40.0, 200.0)     # default azimuth span (degrees) from the first to the last orbit view
_SHAPES = ("sphere", "box", "cylinder", "torus")
_TEXTURES = ("noise", "checker", "stripes", "spots")
# Orbit scenes favour what tells one azimuth from another: boxes over the rotationally symmetric
# spheres, cylinders and tori, and aperiodic textures (noise, spots) over checkers and stripes;
# the ground is noise or spots (a checker floor looks the same from many directions).
_ORBIT_SHAPE_P = (0.15, 0.5, 0.2, 0.15)          # sphere, box, cylinder, torus
_ORBIT_TEXTURE_P = (0.4, 0.1, 0.1, 0.4)          # noise, checker, stripes, spots
_TORUS_TUBE = 0.35           # minor radius of the unit torus (major radius 1)
_ENV_ID = 1                  # mask id of the ground / room; objects are 2, 3, ...
_PATH_CLEARANCE = 1.6        # forward mode: objects keep this far (plus their radius) from the start line


# ----------------------------------------------------------------------------- argument checks


def check_orbit_arc(arc) -> tuple[float, float]:
    """``(lo, hi)`` degrees with ``0 <= lo <= hi <= 360``, else a ``ValueError`` that says so."""
    try:
        lo, hi = (float(a) for a in arc)
    except (TypeError, ValueError):
        raise ValueError(f"orbit_arc must be (lo, hi) in degrees, e.g. (40, 200), got {arc!r}") from None
    if not (0.0 <= lo <= hi <= 360.0):
        raise ValueError(f"orbit_arc must satisfy 0 <= lo <= hi <= 360 degrees, got {arc!r}")
    return lo, hi


def _check_args(seed, n_views, mode):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(n_views, bool) or not isinstance(n_views, (int, np.integer)) or n_views < 2:
        raise ValueError(f"n_views must be an int >= 2 (a Scene needs at least 2 views), got {n_views!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _open3d():
    """open3d, imported without its Jupyter web visualiser (which prints a banner into the
    notebook and registers a comm nobody answers); a user's own OPEN3D_DISABLE_WEB_VISUALIZER wins."""
    os.environ.setdefault("OPEN3D_DISABLE_WEB_VISUALIZER", "true")
    import open3d
    return open3d


# ----------------------------------------------------------------------------- geometry


_UNIT_MESHES = Path(__file__).with_name("unit_meshes.npz")


@functools.lru_cache(maxsize=None)
def _unit_mesh(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(n, 3)`` float64 and triangles ``(m, 3)`` int32 of a unit shape centred at 0:
    sphere radius 1, box [-1, 1]^3, cylinder radius 1 with z in [-1, 1], torus of major
    radius 1 and tube radius 0.35 around the z axis, quad [-1, 1]^2 at z = 0.

    The curved shapes are open3d's ``TriangleMesh.create_*`` meshes, stored once in
    ``unit_meshes.npz`` next to this file (``scripts/make_unit_meshes.py``), so building a
    scene needs no open3d."""
    if kind == "quad":
        v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float64)
        t = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    elif kind in _SHAPES:
        with np.load(_UNIT_MESHES) as f:
            v = f[f"{kind}_vertices"].astype(np.float64)
            t = f[f"{kind}_triangles"].astype(np.int32)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    v.setflags(write=False)
    t.setflags(write=False)
    return v, t


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float64)


def _look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """OpenCV ``c2w (4, 4)`` at ``eye`` looking at ``target`` with world +z up (y down in the
    image), rotated by ``roll`` radians about the optical axis."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(roll), math.sin(roll)
    x, y = c * x + s * y, -s * x + c * y
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def _random_rotation(rng: np.random.Generator, upright: bool) -> np.ndarray:
    """Yaw about z (``upright``), or a yaw plus a tilt about x for shapes lying any way."""
    R = _rot_z(rng.uniform(0, 2 * math.pi))
    if not upright:
        R = R @ _rot_x(rng.choice([0.0, math.pi / 2, rng.uniform(0, math.pi)]))
    return R


def _mat3(x: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``x (n, 3) @ M (3, 3)`` written out: for tall thin arrays this is several times faster
    than numpy's BLAS call (whose threads fight with open3d / torch threads)."""
    out = np.empty(x.shape, np.result_type(x, M))
    for j in range(3):
        out[:, j] = x[:, 0] * M[0, j] + x[:, 1] * M[1, j] + x[:, 2] * M[2, j]
    return out


class _Part:
    """One textured piece: a unit shape placed by ``X = R (s * x) + t``."""

    def __init__(self, kind, R, s, t, texture, mask_id, normal=None):
        self.kind, self.texture, self.mask_id = kind, texture, mask_id
        self.R, self.s, self.t = (np.asarray(a, np.float64) for a in (R, s, t))
        self.normal = normal                 # fixed unit-frame normal for quads
        # float32 copies for the per-pixel maths (points come back from the ray caster in float32)
        self.R32, self.s32, self.t32 = (a.astype(np.float32) for a in (self.R, self.s, self.t))

    def vertices(self) -> np.ndarray:
        v, _ = _unit_mesh(self.kind)
        return _mat3(v * self.s, self.R.T) + self.t

    def local(self, p: np.ndarray) -> np.ndarray:
        """Metric coordinates ``(n, 3)`` of world points ``p`` in the part's rigid frame."""
        return _mat3(p - self.t32, self.R32)

    def normals(self, loc: np.ndarray) -> np.ndarray:
        """World unit normals ``(n, 3)`` at points with rigid-frame coordinates ``loc (n, 3)``
        (analytic, so curved shapes shade smoothly although they are ray cast as meshes)."""
        q = loc / self.s32                                         # unit-shape coordinates
        if self.kind == "sphere":
            n = q
        elif self.kind == "box":
            k = np.abs(q).argmax(axis=1)
            rows = np.arange(len(q))
            n = np.zeros_like(q)
            n[rows, k] = np.sign(q[rows, k])
        elif self.kind == "cylinder":
            n = q.copy()
            cap = np.abs(q[:, 2]) > 1.0 - 1e-4
            n[:, 2] = 0.0
            n[cap] = 0.0
            n[cap, 2] = np.sign(q[cap, 2])
        elif self.kind == "torus":
            r = np.maximum(np.sqrt(q[:, 0] ** 2 + q[:, 1] ** 2), 1e-9)
            n = q.copy()
            n[:, 0] -= q[:, 0] / r
            n[:, 1] -= q[:, 1] / r
        else:                                                      # quad: one normal
            n = np.asarray(self.normal, np.float32)[None]
        n = _mat3(n / self.s32, self.R32.T)                        # inverse-transpose of R diag(s)
        return n / np.maximum(np.sqrt(n[:, 0] ** 2 + n[:, 1] ** 2 + n[:, 2] ** 2), 1e-12)[:, None]


# ----------------------------------------------------------------------------- textures


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated-ish random RGB in [0.1, 0.95] from a random hue."""
    h = rng.uniform(0, 1)
    sat = rng.uniform(0.35, 0.9)
    val = rng.uniform(0.45, 0.95)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    rgb = val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)
    return np.clip(rgb, 0.05, 0.95)


def _periodic_lattice(t: np.ndarray) -> np.ndarray:
    """``(16, 16, 16)`` random values -> ``(17, 17, 17)`` float32 with wrap-around copies."""
    return np.pad(t, ((0, 1), (0, 1), (0, 1)), mode="wrap").astype(np.float32)


def _make_texture(rng: np.random.Generator, kind: str | None = None, freq=(2.5, 7.0), kind_p=None) -> dict:
    """Parameters of one procedural texture: kind, two colours, frequency (cycles / metre),
    a stripe direction, random offset and a seeded 16^3 (periodic) value-noise lattice."""
    if kind is None:
        kind = _TEXTURES[rng.integers(len(_TEXTURES))] if kind_p is None else _TEXTURES[rng.choice(len(_TEXTURES), p=kind_p)]
    c0 = _random_colour(rng)
    c1 = _random_colour(rng)
    if np.abs(c0 - c1).sum() < 0.6:          # keep the two colours apart: contrast for matching
        c1 = np.clip(1.0 - c0 + rng.uniform(-0.1, 0.1, 3), 0.05, 0.95)
    d = rng.normal(size=3)
    return dict(kind=kind, c0=c0.astype(np.float32), c1=c1.astype(np.float32),
                freq=np.float32(rng.uniform(*freq)), dir=(d / np.linalg.norm(d)).astype(np.float32),
                offset=rng.uniform(-50, 50, 3).astype(np.float32), lattice=_periodic_lattice(rng.random((16, 16, 16))))


def _value_noise(x: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1] at points ``x (n, 3)`` (lattice units), periodic in 16.

    ``lattice`` is a ``(17, 17, 17)`` table whose last slice repeats the first (see
    :func:`_make_texture`), so the 8 corners of a cell are ``base + const`` in the flat table.
    """
    P = lattice.shape[0]                     # 17 = period + 1
    flat = lattice.ravel()
    fl = np.floor(x)
    f = x - fl
    w = f * f * (3.0 - 2.0 * f)
    i = fl.astype(np.int32) & (P - 2)
    base = (i[:, 0] * P + i[:, 1]) * P + i[:, 2]
    wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
    sx, sy = P * P, P

    def edge(o):                             # lerp along z on the cell edge at offset o
        lo = flat[base + o]
        return lo + wz * (flat[base + (o + 1)] - lo)

    e00, e01, e10, e11 = edge(0), edge(sy), edge(sx), edge(sx + sy)
    e0 = e00 + wy * (e01 - e00)
    e1 = e10 + wy * (e11 - e10)
    return e0 + wx * (e1 - e0)


def _albedo(tex: dict, x: np.ndarray) -> np.ndarray:
    """Albedo ``(n, 3)`` in [0, 1] of texture ``tex`` at metric points ``x (n, 3)``."""
    f = tex["freq"]
    lat = tex["lattice"]
    n1 = _value_noise(x * f, lat)
    n2 = _value_noise(x * (np.float32(2.7) * f) + np.float32(5.3), lat)
    fbm = (0.65 * n1 + 0.35 * n2)
    kind = tex["kind"]
    if kind == "noise":
        s = np.clip((fbm - 0.5) * 2.2 + 0.5, 0.0, 1.0)
        bright = 0.85 + 0.3 * _value_noise(x * (np.float32(6.1) * f), lat)
    elif kind == "checker":
        c = np.floor(x * f).astype(np.int32)
        s = ((c[:, 0] + c[:, 1] + c[:, 2]) & 1).astype(np.float32)
        bright = 0.8 + 0.4 * fbm
    elif kind == "stripes":
        d = tex["dir"]
        along = x[:, 0] * d[0] + x[:, 1] * d[1] + x[:, 2] * d[2]
        s = 0.5 + 0.5 * np.sin(np.float32(2 * math.pi * 0.6) * f * along + 5.0 * n1)
        bright = 0.85 + 0.3 * n2
    else:                                    # spots
        s = np.clip((n1 - 0.45) * 8.0, 0.0, 1.0)
        bright = 0.75 + 0.5 * n2
    col = tex["c0"] + s[:, None] * (tex["c1"] - tex["c0"])
    return np.clip(col * np.asarray(bright, np.float32)[..., None], 0.0, 1.0)


# ----------------------------------------------------------------------------- layouts


def _place_objects(rng, n, region, clear, sizes, shape_p=None):
    """Rejection-sample ``n`` non-overlapping objects resting on z = 0.

    ``region`` = (xmin, xmax, ymin, ymax); ``clear(xy, r)`` -> bool says whether a footprint
    of radius ``r`` at ``xy`` is allowed. Returns a list of ``(kind, R, s, t)``."""
    placed, out = [], []
    for _ in range(n):
        for _attempt in range(60):
            kind = _SHAPES[rng.integers(len(_SHAPES))] if shape_p is None else _SHAPES[rng.choice(len(_SHAPES), p=shape_p)]
            size = rng.uniform(*sizes)
            if kind == "sphere":
                s = size * np.array([1.0, 1.0, 1.0]) * rng.uniform(0.75, 1.25, 3)
                R = _random_rotation(rng, upright=False)
            elif kind == "box":
                s = size * rng.uniform(0.5, 1.1, 3)
                R = _random_rotation(rng, upright=True)
            elif kind == "cylinder":
                r = size * rng.uniform(0.4, 0.8)
                s = np.array([r, r, size * rng.uniform(0.5, 1.2)])
                R = _random_rotation(rng, upright=rng.random() < 0.7)
            else:
                s = size * np.array([0.75, 0.75, 0.75]) * rng.uniform(0.9, 1.1)
                R = _random_rotation(rng, upright=False)
            v, _ = _unit_mesh(kind)
            verts = (v * s) @ R.T
            foot = float(np.linalg.norm(verts[:, :2], axis=1).max())
            xy = np.array([rng.uniform(region[0], region[1]), rng.uniform(region[2], region[3])])
            if not clear(xy, foot):
                continue
            if any(np.linalg.norm(xy - pxy) < foot + pr + 0.05 for pxy, pr in placed):
                continue
            z = -float(verts[:, 2].min())
            if rng.random() < 0.15:
                z += rng.uniform(0.0, 0.5 * size)          # a few float a little
            placed.append((xy, foot))
            out.append((kind, R, s, np.array([xy[0], xy[1], z])))
            break
    return out


def _orbit_layout(rng, n_objects):
    n = int(rng.integers(2, 6)) if n_objects is None else n_objects
    objs = _place_objects(rng, n, (-1.3, 1.3, -1.3, 1.3),
                          clear=lambda xy, r: np.linalg.norm(xy) + r < 1.9, sizes=(0.25, 0.6), shape_p=_ORBIT_SHAPE_P)
    parts = [_Part("quad", np.eye(3), [9.0, 9.0, 1.0], [0, 0, 0],
                   _make_texture(rng, kind=("spots", "noise")[rng.integers(2)], freq=(1.2, 3.0)),
                   _ENV_ID, normal=(0, 0, 1))]
    for k, (kind, R, s, t) in enumerate(objs):
        parts.append(_Part(kind, R, s, t, _make_texture(rng, kind_p=_ORBIT_TEXTURE_P), 2 + k))
    light = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), 40.0])
    centre = np.mean([t for *_, t in objs], axis=0) if objs else np.zeros(3)
    centre = np.array([centre[0], centre[1], 0.3])
    # horizontal radius that contains every object, seen from the centre
    extent = max([np.linalg.norm(t[:2] - centre[:2]) + float(np.abs(s).max()) * 1.4
                  for _, _, s, t in objs], default=0.5)
    sky = (_random_colour(rng) * 0.3 + 0.65, _random_colour(rng) * 0.4 + 0.3)
    return dict(parts=parts, light=light, centre=centre, extent=extent, sky=sky)


def _forward_layout(rng, n_objects):
    L, Wd, Ht = rng.uniform(7.0, 11.0), rng.uniform(4.5, 7.0), rng.uniform(2.6, 3.3)
    # the camera path runs along +x near y = y_path; objects keep clear of it
    y_path = rng.uniform(-0.25, 0.25) * Wd
    x_start = -L / 2 + rng.uniform(0.6, 1.2)
    n = int(rng.integers(4, 10)) if n_objects is None else n_objects

    def clear(xy, r):
        inside = (abs(xy[0]) + r < L / 2 - 0.05) and (abs(xy[1]) + r < Wd / 2 - 0.05)
        return inside and (abs(xy[1] - y_path) > r + _PATH_CLEARANCE or xy[0] - r > x_start + 4.5)

    objs = _place_objects(rng, n, (-L / 2, L / 2, -Wd / 2, Wd / 2), clear, sizes=(0.25, 0.7))
    wall_tex = _make_texture(rng, kind=("stripes", "noise")[rng.integers(2)], freq=(1.5, 4.0))
    floor_tex = _make_texture(rng, kind=("checker", "stripes")[rng.integers(2)], freq=(1.5, 3.5))
    hx, hy, hz = L / 2, Wd / 2, Ht / 2
    # (rotation taking the unit quad's +z normal to the inward normal, half sizes, centre)
    faces = [
        (np.eye(3), [hx, hy, 1], [0, 0, 0], floor_tex),
        (_rot_x(math.pi), [hx, hy, 1], [0, 0, Ht], _make_texture(rng, kind="noise", freq=(0.8, 2.0))),
        (_rot_x(-math.pi / 2), [hx, hz, 1], [0, -hy, hz], wall_tex),   # wall y = -hy, normal +y
        (_rot_x(math.pi / 2), [hx, hz, 1], [0, hy, hz], wall_tex),     # wall y = +hy, normal -y
        (_rot_z(math.pi / 2) @ _rot_x(math.pi / 2), [hy, hz, 1], [-hx, 0, hz], _make_texture(rng, freq=(1.5, 4.0))),
        (_rot_z(-math.pi / 2) @ _rot_x(math.pi / 2), [hy, hz, 1], [hx, 0, hz], _make_texture(rng, freq=(1.5, 4.0))),
    ]
    parts = [_Part("quad", R, s, t, tex, _ENV_ID, normal=(0, 0, 1)) for R, s, t, tex in faces]
    for k, (kind, R, s, t) in enumerate(objs):
        parts.append(_Part(kind, R, s, t, _make_texture(rng), 2 + k))
    light = np.array([rng.uniform(-0.3, 0.3) * L, rng.uniform(-0.3, 0.3) * Wd, Ht - 0.2])
    obstacles = [(t[:2].copy(), float(np.linalg.norm(((_unit_mesh(kind)[0] * s) @ R.T)[:, :2], axis=1).max()))
                 for kind, R, s, t in objs]
    return dict(parts=parts, light=light, room=(L, Wd, Ht), y_path=y_path, x_start=x_start, obstacles=obstacles)


# ----------------------------------------------------------------------------- cameras


def _orbit_cameras(rng, layout, n_views, arc_deg=ORBIT_ARC):
    radius = rng.uniform(1.25, 1.7) * (layout["extent"] + 0.3)
    elev = rng.uniform(math.radians(12), math.radians(40))
    arc = rng.uniform(math.radians(arc_deg[0]), math.radians(arc_deg[1]))
    az0 = rng.uniform(0, 2 * math.pi)
    fov = math.radians(rng.uniform(40, 55))
    poses = []
    for i in range(n_views):
        a = az0 + arc * i / max(n_views - 1, 1) + rng.normal(0, math.radians(4))
        e = float(np.clip(elev + rng.normal(0, math.radians(4)), math.radians(6), math.radians(60)))
        r = radius * rng.uniform(0.9, 1.1)
        c = layout["centre"]
        eye = c + r * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        target = c + rng.normal(0, 0.12, 3)
        poses.append(_look_at(eye, target, roll=rng.normal(0, math.radians(3))))
    return np.stack(poses), fov


def _forward_cameras(rng, layout, n_views):
    """A walk through the room: ``step`` metres per view along a heading that turns by ``turn``
    degrees per view (a curve, not a line), the camera looking ``strafe`` degrees off its
    direction of motion (sideways walking), plus small per-view jitter of yaw, pitch, roll and
    height. Distribution (per scene): step ~ U(0.25, 0.55) m, turn ~ U(-12, 12) deg/view,
    strafe ~ U(-25, 25) deg, start yaw ~ U(-14, 14) deg, pitch ~ U(-9, 3) deg, fov ~ U(55, 75) deg.
    A walk that would pass within 0.7 m of a wall or an object's footprint is drawn again with a
    gentler turn and shorter steps (rejection with shrinking, deterministic per seed)."""
    L, Wd, Ht = layout["room"]
    obstacles = layout.get("obstacles", [])
    step = rng.uniform(0.25, 0.55)
    turn = math.radians(rng.uniform(-12.0, 12.0))
    strafe = math.radians(rng.uniform(-25.0, 25.0))
    height0 = rng.uniform(1.2, 1.8)
    yaw0 = rng.uniform(-0.25, 0.25)
    pitch0 = rng.uniform(-0.15, 0.05)
    fov = math.radians(rng.uniform(55, 75))
    margin = 0.7

    def clear(x, y):
        if abs(x) > L / 2 - margin or abs(y) > Wd / 2 - margin:
            return False
        return all(math.hypot(x - o[0][0], y - o[0][1]) > r + margin for o in obstacles for r in (o[1],))

    for attempt in range(40):
        x, y, height = layout["x_start"], layout["y_path"], height0
        yaw, pitch = yaw0, pitch0
        poses, ok = [], True
        for i in range(n_views):
            ok = ok and clear(x, y)
            heading = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
            eye = np.array([x, y, height])
            poses.append(_look_at(eye, eye + heading, roll=rng.normal(0, math.radians(1.5))))
            move = yaw - strafe + rng.normal(0, math.radians(2))         # direction of motion
            d = step * rng.uniform(0.85, 1.15)
            x, y = x + d * math.cos(move), y + d * math.sin(move)
            height += rng.normal(0, 0.02)
            yaw += turn + rng.normal(0, math.radians(2))
            pitch = float(np.clip(pitch + rng.normal(0, math.radians(1.5)), -0.3, 0.15))
        if ok:
            break
        turn *= 0.75
        strafe *= 0.75
        step *= 0.9
    return np.stack(poses), fov


# ----------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=8)
def _pixel_centres(H: int, W: int) -> np.ndarray:
    """``(H * W, 2)`` float64 ``(u, v)`` OpenCV pixel centres, row-major (cached per size)."""
    uv = pixel_grid(H, W, dtype=torch.float64).numpy().reshape(-1, 2)
    uv.setflags(write=False)
    return uv


RAYCAST_BACKENDS = ("auto", "open3d", "torch")


@functools.lru_cache(maxsize=None)
def _have_open3d() -> bool:
    try:
        _open3d()
    except ImportError:
        return False
    return True


def resolve_raycast(backend: str) -> str:
    """``"auto"`` -> ``"open3d"`` where open3d imports, else ``"torch"``; ``"open3d"`` without
    open3d -> a ``ValueError`` saying what to do."""
    if backend not in RAYCAST_BACKENDS:
        raise ValueError(f"raycast backend must be one of {RAYCAST_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "open3d" if _have_open3d() else "torch"
    if backend == "open3d" and not _have_open3d():
        raise ValueError("raycast backend 'open3d' needs the open3d package, which is not installed here; "
                         "use raycast='torch' (config: data.raycast: torch) or install open3d")
    return backend


def _cast(verts, tris, groups, rays, backend, device, n_threads):
    """Nearest hits of ``rays (R, 6)`` float32 (origin, direction): ``t_hit (R,)`` float32
    (inf = miss) and triangle ids ``(R,)`` (only read where something was hit)."""
    if backend == "open3d":
        o3d = _open3d()
        mesh = o3d.t.geometry.TriangleMesh()
        mesh.vertex.positions = o3d.core.Tensor(verts)
        mesh.triangle.indices = o3d.core.Tensor(tris)
        rc = o3d.t.geometry.RaycastingScene()
        rc.add_triangles(mesh)
        ans = rc.cast_rays(o3d.core.Tensor.from_numpy(rays), nthreads=n_threads)
        return ans["t_hit"].numpy(), ans["primitive_ids"].numpy()
    t_hit, prim = cast_rays(verts, tris, rays[:, :3], rays[:, 3:], groups=groups,
                            device=torch.device("cpu") if device is None else device)
    return t_hit.cpu().numpy(), prim.cpu().numpy()


def _render(layout, c2w: np.ndarray, K: np.ndarray, H: int, W: int, n_threads: int = 0,
            raycast: str = "open3d", device=None):
    """Ray cast all views at once (``raycast``: "open3d" or "torch", the latter on ``device``).
    Returns float32 images (V, H, W, 3), depth (V, H, W) and int64 masks (V, H, W)."""
    parts = layout["parts"]
    verts, tris, owner, groups, off, n_tri = [], [], [], [], 0, 0
    for j, p in enumerate(parts):
        v = p.vertices()
        _, t = _unit_mesh(p.kind)
        verts.append(v)
        tris.append(t + off)
        owner.append(np.full(len(t), j, np.int16))   # int16: radix argsort below
        groups.append((n_tri, n_tri + len(t)))
        off += len(v)
        n_tri += len(t)
    owner = np.concatenate(owner)

    V = c2w.shape[0]
    uv = _pixel_centres(H, W)
    d_cam = ((uv - K[:2, 2]) / K[[0, 1], [0, 1]]).astype(np.float32)  # (HW, 2); z = 1, so t_hit is z-depth
    R = c2w[:, :3, :3].astype(np.float32)
    rays = np.empty((V, H * W, 6), np.float32)
    rays[..., :3] = c2w[:, None, :3, 3].astype(np.float32)
    for k in range(3):                                              # world direction R [x, y, 1]
        rays[..., 3 + k] = d_cam[:, 0] * R[:, k, 0, None] + d_cam[:, 1] * R[:, k, 1, None] + R[:, k, 2, None]
    rays = rays.reshape(-1, 6)
    t_hit, prim = _cast(np.concatenate(verts).astype(np.float32), np.concatenate(tris).astype(np.int32), groups,
                        rays, raycast, device, n_threads)

    n_rays = len(rays)
    hit = np.isfinite(t_hit)
    depth = np.where(hit, t_hit, np.float32(0.0))
    colour = np.empty((n_rays, 3), np.float32)
    mask = np.zeros(n_rays, np.int64)

    # sky: a gradient over the elevation of the ray (a point at infinity: same in all views)
    if not hit.all():
        miss = ~hit
        dm = rays[miss, 3:]
        el = np.clip(dm[:, 2] / np.linalg.norm(dm, axis=1), 0.0, 1.0)[:, None]
        lo, hi = layout.get("sky", (np.full(3, 0.8), np.full(3, 0.5)))
        colour[miss] = (lo + np.sqrt(el) * (hi - lo)).astype(np.float32)

    idx = np.flatnonzero(hit)
    pid = owner[prim[idx]]
    order = np.argsort(pid, kind="stable")
    idx, pid = idx[order], pid[order]
    bounds = np.searchsorted(pid, np.arange(len(parts) + 1, dtype=np.int16))
    points = (rays[:, :3] + depth[:, None] * rays[:, 3:])[idx]    # world hit points
    light = layout["light"].astype(np.float32)
    for j, part in enumerate(parts):
        a, b = bounds[j], bounds[j + 1]
        if a == b:
            continue
        p = points[a:b]
        loc = part.local(p)
        n = part.normals(loc)                                      # (n, 3) or (1, 3) for a quad
        to_l = light - p
        dot = (n[:, 0] * to_l[:, 0] + n[:, 1] * to_l[:, 1] + n[:, 2] * to_l[:, 2])
        lam = np.clip(dot / np.sqrt(to_l[:, 0] ** 2 + to_l[:, 1] ** 2 + to_l[:, 2] ** 2), 0.0, 1.0)
        alb = _albedo(part.texture, loc + part.texture["offset"])
        colour[idx[a:b]] = alb * (0.4 + 0.6 * lam)[:, None]
        mask[idx[a:b]] = part.mask_id
    return (np.clip(colour, 0.0, 1.0).reshape(V, H, W, 3), depth.reshape(V, H, W), mask.reshape(V, H, W))


def _layout_and_cameras(seed, n_views, mode, n_objects, orbit_arc):
    ss = np.random.SeedSequence([int(seed), MODES.index(mode)])
    layout_rng, camera_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    if mode == "orbit":
        layout = _orbit_layout(layout_rng, n_objects)
        c2w, fov = _orbit_cameras(camera_rng, layout, n_views, orbit_arc)
    else:
        layout = _forward_layout(layout_rng, n_objects)
        c2w, fov = _forward_cameras(camera_rng, layout, n_views)
    return layout, c2w, fov


def make_cameras(seed: int, n_views: int = 4, mode: str = "orbit", n_objects: int | None = None,
                 orbit_arc=ORBIT_ARC) -> torch.Tensor:
    """The cameras ``c2w (V, 4, 4)`` float32 of ``make_scene(seed, n_views, ..., mode)`` without
    rendering anything (the same random draws): cheap enough to fit pose priors on thousands of
    training scenes (:mod:`flare_nb.eval.priors`)."""
    _check_args(seed, n_views, mode)
    _, c2w, _ = _layout_and_cameras(seed, n_views, mode, n_objects, check_orbit_arc(orbit_arc))
    return torch.from_numpy(c2w.astype(np.float32))


def make_scene(seed: int, n_views: int = 4, size=(128, 128), mode: str = "orbit",
               n_objects: int | None = None, return_masks: bool = False, n_threads: int = 0,
               orbit_arc=ORBIT_ARC, raycast: str = "auto", device=None):
    """A procedural multi-view :class:`~flare_nb.scenes.scene.Scene` with exact cameras and depth.

    Args:
        seed: non-negative int; same seed (and arguments) -> bitwise identical output. The
            layout and textures depend only on ``seed``, ``mode`` and ``n_objects`` (not on
            ``n_views`` or ``size``); view ``i``'s camera is the same for every ``n_views > i``
            in forward mode, and view 0's in both modes.
        n_views: number of views ``V >= 2``.
        size: ``(W, H)`` (or an int for square), multiples of 64, else ``ValueError``.
        mode: ``"orbit"`` -- cameras on a jittered ring arc around objects on a ground plane,
            looking at their centre (CO3D-like); ``"forward"`` -- a camera walking forward
            (and drifting sideways) through a closed room (RealEstate10K-like).
        n_objects: number of shapes (default random: 2-5 orbit, 4-9 forward). Fewer may be
            placed when the space is full.
        return_masks: also return the object ids ``(V, H, W)`` int64 (0 sky, 1 ground / room,
            ``2 + k`` object ``k``).
        n_threads: open3d ray casting threads (0 = all cores).
        raycast: "auto" (open3d where installed, else torch), "open3d" (Embree, CPU) or "torch"
            (:mod:`flare_nb.scenes.raycast_torch`, on ``device``: CPU by default, or a GPU).
            Both give the same scene up to float32 rounding: depth within a few ulps, and the
            hit / miss or object decision may differ at a few silhouette pixels.
        device: torch device of the "torch" ray caster (default CPU); the scene is returned
            on the CPU either way.
        orbit_arc: ``(lo, hi)`` degrees, orbit mode: the azimuth span from the first to the last
            view is drawn uniformly in it (default ``ORBIT_ARC`` = (40, 200)); same random
            draws for any range, so only the spread of the cameras changes.

    Returns:
        ``Scene`` with ``images (V, 3, H, W)`` in [0, 1], ``K (V, 3, 3)`` (one camera per
        scene, principal point at the image centre), ``c2w (V, 4, 4)`` OpenCV, ``depth
        (V, H, W)`` z-depth with 0 = no hit; or ``(scene, masks)`` with ``return_masks``.
        World frame: +z up, ground at z = 0, metres.
    """
    _check_args(seed, n_views, mode)
    W, H = check_size(size)
    orbit_arc = check_orbit_arc(orbit_arc)
    if n_objects is not None and (isinstance(n_objects, bool) or not isinstance(n_objects, (int, np.integer))
                                  or not 0 <= n_objects <= 12):
        raise ValueError(f"n_objects must be None or an int in [0, 12], got {n_objects!r}")
    layout, c2w, fov = _layout_and_cameras(seed, n_views, mode, n_objects, orbit_arc)
    focal = 0.5 * W / math.tan(0.5 * fov)
    K = intrinsics_from_focal(focal, H, W, dtype=torch.float64).numpy()
    img, depth, masks = _render(layout, c2w, K, H, W, n_threads=n_threads, raycast=resolve_raycast(raycast),
                                device=device)
    scene = Scene(images=torch.from_numpy(np.ascontiguousarray(img.transpose(0, 3, 1, 2))),
                  K=torch.from_numpy(np.repeat(K[None], n_views, 0).astype(np.float32)),
                  c2w=torch.from_numpy(c2w.astype(np.float32)),
                  depth=torch.from_numpy(depth),
                  names=[f"{mode}{seed}_v{i}" for i in range(n_views)],
                  source=f"synthetic:{mode}:seed={seed}")
    return (scene, torch.from_numpy(masks)) if return_masks else scene


# ----------------------------------------------------------------------------- pointmaps and datasets


def pointmaps(scene: Scene, frame: str = "camera") -> torch.Tensor:
    """Ground-truth pointmaps ``(V, H, W, 3)`` from ``scene.depth`` (notebook 00).

    ``frame="camera"``: each view in its own OpenCV camera frame (``X[..., 2] == depth``);
    ``"view0"``: all in view 0's camera frame (FLARE's global frame before the translation
    normalisation of :func:`flare_nb.cameras.normalize_translation`); ``"world"``: the scene's
    world frame. Pixels with depth 0 (no data) are set to (0, 0, 0) in every frame; use
    ``scene.depth > 0`` as the validity mask.
    """
    if scene.depth is None:
        raise ValueError(f"pointmaps needs scene.depth, but {scene.source or 'this scene'} has none")
    frames = ("camera", "view0", "world")
    if frame not in frames:
        raise ValueError(f"frame must be one of {frames}, got {frame!r}")
    X = unproject_depth(scene.depth, scene.K)
    if frame == "camera":
        return X
    T = scene.c2w if frame == "world" else invert_pose(scene.c2w[0]) @ scene.c2w
    return torch.where((scene.depth > 0)[..., None], transform_points(T, X), torch.zeros_like(X))


class SyntheticDataset(torch.utils.data.Dataset):
    """Synthetic scenes rendered on the fly, one per seed (notebook 06, training).

    ``seeds``: an int ``n`` (seeds ``0 .. n-1``) or a sequence / range of non-negative ints.
    Item ``i`` is ``make_scene(seeds[i], n_views, size, modes[i % len(modes)])``, a
    :class:`~flare_nb.scenes.scene.Scene`; use ``collate_fn=collate_scenes`` in a ``DataLoader``.
    ``cache=True`` keeps each rendered scene (8-bit images, ~80 kB for 4 views of 64x64) and
    returns it again on the next access: a fixed pool of scenes rendered once, for training
    runs that revisit their scenes many times. ``raycast`` / ``device``: as in :func:`make_scene`.
    """

    def __init__(self, seeds: int | Sequence[int] = 1000, n_views: int = 4, size=(128, 128),
                 modes: Sequence[str] = MODES, n_objects: int | None = None, n_threads: int = 1,
                 orbit_arc=ORBIT_ARC, cache: bool = False, raycast: str = "auto", device=None):
        if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
            if seeds <= 0:
                raise ValueError(f"seeds must be a positive count or a sequence of seeds, got {seeds}")
            seeds = range(int(seeds))
        self.seeds = list(seeds)
        if not self.seeds:
            raise ValueError("SyntheticDataset: seeds is empty")
        if isinstance(modes, str):
            modes = (modes,)
        for m in modes:
            if m not in MODES:
                raise ValueError(f"modes must be a subset of {MODES}, got {m!r}")
        if not modes:
            raise ValueError(f"modes must name at least one of {MODES}")
        _check_args(self.seeds[0], n_views, modes[0])
        self.n_views, self.size, self.modes = n_views, check_size(size), tuple(modes)
        self.n_objects, self.n_threads = n_objects, n_threads
        self.orbit_arc = check_orbit_arc(orbit_arc)
        self.cache = bool(cache)
        self.raycast, self.device = resolve_raycast(raycast), device
        self._cached: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> Scene:
        return self.scene(i)

    def scene(self, i: int, orbit_arc=None) -> Scene:
        """Item ``i``, optionally with another orbit spread (a training curriculum,
        ``data.orbit_arc_start`` in :mod:`flare_nb.train.config`); same layout and textures."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"SyntheticDataset index {i} out of range for {len(self)} scenes")
        i = i % len(self)
        if self.cache and orbit_arc is None:
            if i not in self._cached:
                self._cached[i] = _pack(self._make(i, None))
            return _unpack(self._cached[i])
        return self._make(i, orbit_arc)

    def cameras(self, i: int) -> tuple[str, torch.Tensor]:
        """``(mode, c2w (V, 4, 4))`` of item ``i`` without rendering it."""
        i = i % len(self)
        mode = self.modes[i % len(self.modes)]
        return mode, make_cameras(self.seeds[i], self.n_views, mode, self.n_objects, self.orbit_arc)

    def _make(self, i: int, orbit_arc) -> Scene:
        return make_scene(self.seeds[i], self.n_views, self.size, self.modes[i % len(self.modes)],
                          n_objects=self.n_objects, n_threads=self.n_threads,
                          orbit_arc=self.orbit_arc if orbit_arc is None else orbit_arc,
                          raycast=self.raycast, device=self.device)


def _pack(scene: Scene) -> tuple:
    """A rendered scene in a quarter of its memory: 8-bit images (the renderer's colours are
    quantised exactly as a PNG would store them), float32 depth kept exact."""
    img = torch.round(scene.images.clamp(0, 1) * 255).to(torch.uint8)
    return img, scene.K, scene.c2w, scene.depth, scene.names, scene.source


def _unpack(packed: tuple) -> Scene:
    img, K, c2w, depth, names, source = packed
    return Scene(images=img.float() / 255, K=K, c2w=c2w, depth=depth, names=list(names), source=source)


def collate_scenes(scenes: Sequence[Scene]) -> dict:
    """Stack scenes of equal ``V`` and size into a batch dict: ``images (B, V, 3, H, W)``,
    ``K (B, V, 3, 3)``, ``c2w (B, V, 4, 4)``, ``depth (B, V, H, W)`` and ``source`` (list)."""
    shapes = {(s.n_views, *s.hw) for s in scenes}
    if len(shapes) != 1:
        raise ValueError(f"collate_scenes needs scenes of one (V, H, W), got {sorted(shapes)}")
    if any(s.depth is None for s in scenes):
        raise ValueError("collate_scenes needs depth in every scene")
    return dict(images=torch.stack([s.images for s in scenes]), K=torch.stack([s.K for s in scenes]),
                c2w=torch.stack([s.c2w for s in scenes]), depth=torch.stack([s.depth for s in scenes]),
                source=[s.source for s in scenes])
