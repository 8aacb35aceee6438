"""``scene.glb``: the point cloud and the cameras as one binary glTF file (``flare-nb`` output folder).

Written here, straight to the glTF 2.0 binary layout (a 12-byte header, one JSON chunk, one
binary chunk; no mesh library needed): one node ``points`` (a POINTS primitive with per-vertex
RGBA colours) and one node per camera, ``camera_000``, ``camera_001``, ... (a LINES primitive:
the frustum wire, 8 segments as 16 vertices, in red). Coordinates are the exports' world frame (view 0's
camera frame, OpenCV axes), unchanged: glTF viewers use y up, so the scene shows upside down
until rotated (x 180 degrees) -- the file keeps the data as exported rather than a second
convention. Read it back with ``trimesh.load(path)``.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from flare_nb.scene_page import _np, _scene_scale, _subset, frustum_corners

__all__ = ["write_scene_glb", "MAX_GLB_POINTS", "FRUSTUM_EDGES"]

MAX_GLB_POINTS = 200_000
FRUSTUM_EDGES = ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1))


_FLOAT, _UBYTE = 5126, 5121                  # glTF componentType codes
_ARRAY_BUFFER = 34962                        # bufferView target of vertex data
_POINTS, _LINES = 0, 1                       # primitive modes
FRUSTUM_RGBA = (220, 20, 60, 255)            # the cameras' colour (crimson, as in scene.html)


class _GlbBuilder:
    """Meshes of one primitive each, their vertex arrays packed into one binary buffer."""

    def __init__(self):
        self.blob, self.views, self.accessors, self.meshes, self.nodes = bytearray(), [], [], [], []

    def _accessor(self, arr: np.ndarray, ctype: int, kind: str, normalized: bool = False) -> int:
        arr = np.ascontiguousarray(arr)
        while len(self.blob) % 4:
            self.blob.append(0)
        self.views.append({"buffer": 0, "byteOffset": len(self.blob), "byteLength": arr.nbytes,
                           "target": _ARRAY_BUFFER})
        self.blob += arr.tobytes()
        acc = {"bufferView": len(self.views) - 1, "componentType": ctype, "count": len(arr), "type": kind}
        if normalized:
            acc["normalized"] = True
        if kind == "VEC3" and ctype == _FLOAT:            # required for POSITION
            acc["min"] = [float(v) for v in arr.min(0)]
            acc["max"] = [float(v) for v in arr.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def add(self, name: str, positions: np.ndarray, rgba: np.ndarray, mode: int):
        attrs = {"POSITION": self._accessor(positions.astype("<f4"), _FLOAT, "VEC3"),
                 "COLOR_0": self._accessor(rgba.astype(np.uint8), _UBYTE, "VEC4", normalized=True)}
        self.meshes.append({"name": name, "primitives": [{"attributes": attrs, "mode": mode}]})
        self.nodes.append({"name": name, "mesh": len(self.meshes) - 1})

    def to_bytes(self) -> bytes:
        while len(self.blob) % 4:
            self.blob.append(0)
        doc = {"asset": {"version": "2.0", "generator": "flare_nb"}, "scene": 0,
               "scenes": [{"nodes": list(range(len(self.nodes)))}], "nodes": self.nodes, "meshes": self.meshes,
               "accessors": self.accessors, "bufferViews": self.views,
               "buffers": [{"byteLength": len(self.blob)}] if self.blob else []}
        js = json.dumps(doc, separators=(",", ":")).encode()
        js += b" " * (-len(js) % 4)
        chunks = struct.pack("<II", len(js), 0x4E4F534A) + js                    # "JSON"
        if self.blob:
            chunks += struct.pack("<II", len(self.blob), 0x004E4942) + bytes(self.blob)   # "BIN\0"
        return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks      # "glTF", version 2


def write_scene_glb(path, points, colors, c2w, K, hw) -> tuple[Path, int, int]:
    """Write ``points (N, 3)`` with ``colors (N, 3)`` in [0, 1] (at most :data:`MAX_GLB_POINTS`,
    a fixed-seed subset beyond) and the ``V`` cameras ``c2w (V, 4, 4)``, ``K (V, 3, 3)`` of images
    ``hw = (H, W)``. Returns ``(path, points written, cameras written)``."""
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
    glb = _GlbBuilder()
    if len(P):
        rgba = np.c_[(np.clip(C, 0, 1) * 255).round(), np.full(len(C), 255)]
        glb.add("points", P, rgba, _POINTS)
    depth = _scene_scale(P, c2w[:, :3, 3])
    edges = np.array(FRUSTUM_EDGES).reshape(-1)
    for i in range(V):
        corners = frustum_corners(c2w[i], K[i], hw, depth)
        glb.add(f"camera_{i:03d}", corners[edges], np.tile(FRUSTUM_RGBA, (len(edges), 1)), _LINES)
    path = Path(path)
    path.write_bytes(glb.to_bytes())
    return path, len(P), V
