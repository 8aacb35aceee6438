"""flare_nb.nb.widgets: the pose-perturbation callback behind notebook 02's widget."""

import math

import matplotlib

matplotlib.use("Agg")
import pytest
import torch

from flare_nb import cameras
from flare_nb.cameras import euler_to_matrix
from flare_nb.nb.widgets import make_pose_widget, pose_perturbation_view


def _trajectory(V=3):
    c2w = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
    for i in range(V):
        c2w[i, :3, :3] = euler_to_matrix(0, 20 * i, 5 * i)
        c2w[i, :3, 3] = torch.tensor([float(i), 0.2 * i, 0.1])
    return c2w


def test_euler_known_answers():
    Rz = euler_to_matrix(0, 0, 90)
    assert torch.allclose(Rz @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64),
                          atol=1e-12)
    Rx = euler_to_matrix(90, 0, 0)
    assert torch.allclose(Rx @ torch.tensor([0.0, 1, 0], dtype=torch.float64), torch.tensor([0.0, 0, 1], dtype=torch.float64),
                          atol=1e-12)
    R = euler_to_matrix(10, -30, 50)
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=R.dtype), atol=1e-12) and abs(torch.det(R) - 1) < 1e-12


def test_zero_perturbation_is_identity():
    c2w = _trajectory()
    _, info = pose_perturbation_view(c2w, 1, draw=False)
    assert info["rotation_deg"] < 1e-5 and info["centre_shift"] == 0 and info["pose_loss"] < 1e-6


def test_rotation_angle_of_float32_poses_is_not_rounding_noise():
    c2w = _trajectory().float()
    c2w[1, :3, :3] = euler_to_matrix(33, -71, 12).float()         # rounded: R^T R is I only to float32 precision
    eps = torch.finfo(torch.float32).eps                            # the rotation's entries carry ~eps rounding, and
    tol = math.degrees(16 * eps)                                    # so does the angle from atan2(sin, cos)
    _, info = pose_perturbation_view(c2w, 1, draw=False)
    assert info["rotation_deg"] < tol
    for deg in (0.05, 0.5, 12.0, 90.0, 170.0):                    # acos of the trace alone: ~eps / sin(angle)
        _, info = pose_perturbation_view(c2w, 1, rx=deg, draw=False)
        assert info["rotation_deg"] == pytest.approx(deg, abs=tol)


def test_info_and_loss_grow_with_the_perturbation():
    c2w = _trajectory()
    losses = []
    for deg in (0, 5, 20, 40):
        _, info = pose_perturbation_view(c2w, 1, ry=deg, draw=False)
        assert info["rotation_deg"] == pytest.approx(deg, abs=1e-6)
        losses.append(info["pose_loss"])
    assert all(a < b for a, b in zip(losses, losses[1:]))
    _, info = pose_perturbation_view(c2w, 2, tx=0.3, draw=False)
    assert info["centre_shift"] == pytest.approx(0.3) and info["loss_trans"] > 0 and info["loss_rot"] < 1e-9


def test_figure_is_drawn():
    c2w = _trajectory()
    K = cameras.intrinsics_from_focal(60.0, 64, 64)
    ax, info = pose_perturbation_view(c2w.float(), 1, rz=30, tz=0.4, K=K, hw=(64, 64))
    from mpl_toolkits.mplot3d.art3d import Line3DCollection
    lines = [c for c in ax.collections if isinstance(c, Line3DCollection)]
    assert len(lines) == 3 + 1                                  # V cameras + the grey ghost
    assert "pose loss" in ax.get_title() and info["c2w"].dtype == torch.float32


def test_widget_builds_and_updates():
    pytest.importorskip("ipywidgets")
    box = make_pose_widget(_trajectory())
    controls = {getattr(c, "description", ""): c for c in box.children}
    assert {"view", "rx (deg)", "tz", "frame"} <= set(controls)
    assert box.last_info["rotation_deg"] == pytest.approx(0.0, abs=1e-6)   # drawn at once, unperturbed
    kinds = [list(o.get("data", {"text": 0})) for o in box.out.outputs]
    assert kinds[0] == ["text"] and "image/png" in kinds[1] and len(kinds) == 2
    controls["ry (deg)"].value = 12.0
    assert box.last_info["rotation_deg"] == pytest.approx(12.0, abs=1e-6)
    assert "rotation 12.00 deg" in box.out.outputs[0]["text"] and "pose loss" in box.out.outputs[0]["text"]
