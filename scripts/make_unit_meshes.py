"""Write ``flare_nb/scenes/unit_meshes.npz``: the unit shapes the synthetic scenes are built from.

The meshes are made once with open3d's ``TriangleMesh.create_*`` (sphere radius 1 at resolution
20; box [-1, 1]^3; cylinder radius 1, z in [-1, 1], resolution 40, split 1; torus of major
radius 1, tube radius 0.35, 40 x 20 segments) and stored as float64 vertices and int32
triangles, so the scene generator needs no open3d to build its geometry (the torch ray caster
runs where open3d is not installed). ``tests/test_raycast_torch.py`` checks the file against
open3d. Usage: ``python scripts/make_unit_meshes.py [--check]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "flare_nb" / "scenes" / "unit_meshes.npz"
TUBE = 0.35


def open3d_meshes() -> dict[str, np.ndarray]:
    import open3d as o3d

    g = o3d.geometry.TriangleMesh
    meshes = {
        "sphere": g.create_sphere(radius=1.0, resolution=20),
        "box": g.create_box(2.0, 2.0, 2.0).translate((-1.0, -1.0, -1.0)),
        "cylinder": g.create_cylinder(radius=1.0, height=2.0, resolution=40, split=1),
        "torus": g.create_torus(torus_radius=1.0, tube_radius=TUBE, radial_resolution=40, tubular_resolution=20),
    }
    out = {}
    for k, m in meshes.items():
        out[f"{k}_vertices"] = np.asarray(m.vertices, dtype=np.float64)
        out[f"{k}_triangles"] = np.asarray(m.triangles, dtype=np.int32)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare the stored file with open3d, write nothing")
    a = p.parse_args(argv)
    ref = open3d_meshes()
    if a.check:
        with np.load(OUT) as f:
            same = set(f.files) == set(ref) and all(np.array_equal(f[k], ref[k]) for k in ref)
        print(f"{OUT}: {'identical to' if same else 'DIFFERS from'} open3d's meshes")
        return 0 if same else 1
    if OUT.exists():
        print(f"{OUT} exists; run with --check to compare it with open3d (nothing was overwritten)", file=sys.stderr)
        return 2
    np.savez_compressed(OUT, **ref)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
