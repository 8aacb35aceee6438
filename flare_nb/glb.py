"""``scene.glb``: the point cloud and the cameras as one binary glTF file (``flare-nb`` output folder).

Written with ``trimesh``: one node ``points`` (a glTF POINTS primitive with per-vertex colours)
and one node per camera, ``camera_000``, ``camera_001``, ... (a LINES primitive: the frustum
wire, 8 segments, in the camera's colour). Coordinates are the exports' world frame (view 0's
camera frame, OpenCV axes), unchanged: glTF viewers use y up, so the scene shows upside down
until rotated (x 180 degrees) -- the file keeps the data as exported rather than a second
convention. Read it back with ``trimesh.load(path)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flare_nb.scene_page import _np, _scene_scale, _subset, frustum_corners

__all__ = ["write_scene_glb", "MAX_GLB_POINTS", "FRUSTUM_EDGES"]

MAX_GLB_POINTS = 200_000
FRUSTUM_EDGES = ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1))


def write_scene_glb(path, points, colors, c2w, K, hw) -> tuple[Path, int, int]:
    """Write ``points (N, 3)`` with ``colors (N, 3)`` in [0, 1] (at most :data:`MAX_GLB_POINTS`,
    a fixed-seed subset beyond) and the ``V`` cameras ``c2w (V, 4, 4)``, ``K (V, 3, 3)`` of images
    ``hw = (H, W)``. Returns ``(path, points written, cameras written)``."""
    import trimesh
    from trimesh.path.entities import Line

    P, C = _np(points).reshape(-1, 3), _np(colors).reshape(-1, 3)
    if len(P) != len(C):
        raise ValueError(f"scene.glb: points {P.shape} and colors {C.shape} differ in length")
    ok = np.isfinite(P).all(1)
    P, C = P[ok], C[ok]
    sel = _subset(len(P), MAX_GLB_POINTS)
    P, C = P[sel], C[sel]
    c2w, K = _np(c2w), _np(K)
    V = c2w.shape[0]
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (V, 3, 3))
    scene = trimesh.Scene()
    if len(P):
        rgba = np.c_[(np.clip(C, 0, 1) * 255).round(), np.full(len(C), 255)].astype(np.uint8)
        scene.add_geometry(trimesh.PointCloud(P.astype(np.float32), colors=rgba), geom_name="points",
                           node_name="points")
    depth = _scene_scale(P, c2w[:, :3, 3])
    for i in range(V):
        corners = frustum_corners(c2w[i], K[i], hw, depth)
        path3d = trimesh.path.Path3D(entities=[Line(list(e)) for e in FRUSTUM_EDGES], vertices=corners)
        name = f"camera_{i:03d}"
        scene.add_geometry(path3d, geom_name=name, node_name=name)
    path = Path(path)
    path.write_bytes(scene.export(file_type="glb"))
    return path, len(P), V
