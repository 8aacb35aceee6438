"""Importing open3d through flare_nb inside a Jupyter kernel prints nothing into the notebook
(open3d's web visualiser announces itself when it sees a ZMQ shell)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_KERNEL = textwrap.dedent("""
    import builtins
    class ZMQInteractiveShell:            # what open3d looks for to decide it runs in Jupyter
        pass
    builtins.get_ipython = lambda: ZMQInteractiveShell()
""")


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPEN3D_DISABLE_WEB_VISUALIZER"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", FAKE_KERNEL + code], capture_output=True, text=True, env=env,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_open3d_through_flare_nb_prints_no_banner():
    out = _run("from flare_nb.scenes import synthetic\nsynthetic._unit_mesh('box')\nprint('done')")
    assert out.strip() == "done", out


def test_the_fake_kernel_does_trigger_the_banner_in_plain_open3d():
    import pytest
    out = _run("import open3d")
    if "Open3D" not in out:
        pytest.skip("this open3d build has no Jupyter web visualiser, so it prints no banner anyway")
    assert "Jupyter environment detected" in out
