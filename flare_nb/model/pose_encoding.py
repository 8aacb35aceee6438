"""The pose encoding: FLARE's 9 numbers per camera, and every way this workbook reads, writes or
moves them (notebooks 02-08). The one home of the codec: the model, the trainer, inference,
the widgets and the notebooks all use these functions.

Layout ``(..., V, 9) = [T (3), q (4, w x y z, not normalised), focal logits (2)]``. It is
**camera-to-world relative to view 0**: ``R(q)`` holds the camera's axes in view 0's frame and
``T`` is the camera centre in view 0's frame, translations trained to have mean norm 1 over
the views (README "Conventions"). The released training code builds the ground truth as
``inv(c2w_0) @ c2w_i`` and writes the predicted ``R(q)`` and ``T`` straight into that matrix,
so decoding is ``c2w = [[R(q), T], [0, 0, 0, 1]]`` with no inversion.

* read: :func:`quaternion_to_rotation` (the released formula, differentiable),
  :func:`decode_pose_encoding` (the model's split into T, q, R, focal), :func:`decode_c2w`
  (4x4 matrices, float64 on the CPU);
* write: :func:`encode_c2w` (what the pose loss trains towards);
* move one camera on purpose: :func:`move_camera` (on ``c2w``) and
  :func:`move_camera_in_encoding` (on an encoding, the quaternion multiplied so its norm is kept);
* random pose noise (training augmentation): :func:`perturb_poses` (on ``c2w``) and
  :func:`perturb_pose_encoding` (on an encoding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flare_nb.cameras import (euler_to_matrix, matrix_to_quat,
                              normalize_translation, quat_multiply,
                              quat_to_matrix, relative_to_view0)

__all__ = ["quaternion_to_rotation", "decode_pose_encoding", "decode_c2w", "encode_c2w", "move_camera",
           "move_camera_in_encoding", "perturb_poses", "perturb_pose_encoding", "check_camera_poses",
           "given_pose_encoding", "RIGID_TOLERANCE"]


# ----------------------------------------------------------------------------- read
def quaternion_to_rotation(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)`` (w, x, y, z), normalised
    implicitly through ``2 / |q|^2`` (the formula the released code uses)."""
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    rows = (1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
            s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
            s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y))
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)


def decode_pose_encoding(enc: torch.Tensor, focal_min: float = 0.1, focal_max: float = 30.0) -> dict:
    """Split pose encodings ``(..., 9)`` into ``T (..., 3)``, ``quaternion (..., 4)`` (raw,
    w first), ``R (..., 3, 3)`` and ``focal (..., 2)`` = clamp(softplus(logits), min, max)."""
    q = enc[..., 3:7]
    return {"T": enc[..., :3], "quaternion": q, "R": quaternion_to_rotation(q),
            "focal": F.softplus(enc[..., 7:9]).clamp(focal_min, focal_max)}


def decode_c2w(pose_enc: torch.Tensor) -> torch.Tensor:
    """Camera-to-world ``(..., 4, 4)`` float64 on the CPU from pose encodings ``(..., 9)``.

    ``R = quat_to_matrix(q)`` (normalised, so exactly orthonormal up to rounding) and
    ``t = T``; detached. No view-0 re-referencing here. Notebook 02.
    """
    if not isinstance(pose_enc, torch.Tensor) or pose_enc.shape[-1] < 7:
        shape = tuple(pose_enc.shape) if isinstance(pose_enc, torch.Tensor) else type(pose_enc).__name__
        raise ValueError(f"pose encodings must be (..., 9) [T, q wxyz, focal], got {shape}")
    e = pose_enc.detach().to("cpu", torch.float64)
    c2w = torch.zeros(*e.shape[:-1], 4, 4, dtype=torch.float64)
    c2w[..., :3, :3] = quat_to_matrix(e[..., 3:7])
    c2w[..., :3, 3] = e[..., :3]
    c2w[..., 3, 3] = 1.0
    return c2w


# ----------------------------------------------------------------------------- write
def encode_c2w(c2w: torch.Tensor, focal_logits: torch.Tensor | None = None) -> torch.Tensor:
    """The pose encoding the pose loss trains towards: ``c2w (..., V, 4, 4)`` -> ``(..., V, 9)``.

    Relative to view 0 (:func:`flare_nb.cameras.relative_to_view0`), translations divided
    by their mean norm (:func:`flare_nb.cameras.normalize_translation`), unit quaternion with
    ``w >= 0``, focal logits from ``focal_logits (..., V, 2)`` or 0 (never trained).
    ``decode_c2w(encode_c2w(c2w))`` is the normalised relative trajectory. Float64 on the CPU.
    E.g. the ground-truth poses of a synthetic scene, to condition stage 3 on exact poses.
    """
    if not isinstance(c2w, torch.Tensor) or c2w.ndim < 3 or tuple(c2w.shape[-2:]) != (4, 4):
        shape = tuple(c2w.shape) if isinstance(c2w, torch.Tensor) else type(c2w).__name__
        raise ValueError(f"c2w must be (..., V, 4, 4) camera-to-world poses, got {shape}")
    rel = relative_to_view0(c2w.detach().to("cpu", torch.float64))
    rel, _ = normalize_translation(rel)
    q = matrix_to_quat(rel[..., :3, :3])
    f = (torch.zeros(*q.shape[:-1], 2, dtype=q.dtype) if focal_logits is None
         else focal_logits.detach().to("cpu", torch.float64).expand(*q.shape[:-1], 2))
    return torch.cat((rel[..., :3, 3], q, f), dim=-1)


# ----------------------------------------------------------------------------- given poses
#: largest accepted deviation of a given pose's rotation block from a rotation (max |R^T R - I|,
#: |det R - 1|) and of its last row from (0, 0, 0, 1): float32 round trips stay far below it
RIGID_TOLERANCE = 1e-3


def check_camera_poses(camera_poses, B: int, V: int) -> torch.Tensor:
    """Validate given camera-to-world poses for ``B`` scenes of ``V`` views and return them as
    a float64 ``(B, V, 4, 4)`` tensor. Accepts ``(V, 4, 4)`` when ``B == 1``. Raises ValueError
    (one line naming the problem) for a wrong shape or view count, non-finite values, and
    matrices that are not rigid (rotation block not orthonormal with det +1, last row not
    ``(0, 0, 0, 1)``)."""
    P = torch.as_tensor(camera_poses).detach().to("cpu", torch.float64)
    if P.ndim == 3 and B == 1:
        P = P[None]
    if P.ndim != 4 or tuple(P.shape[-2:]) != (4, 4):
        raise ValueError(f"camera_poses must be camera-to-world matrices (V, 4, 4) or (B, V, 4, 4), "
                         f"got shape {tuple(P.shape)}")
    if P.shape[0] != B or P.shape[1] != V:
        raise ValueError(f"camera_poses has {P.shape[1]} poses for {P.shape[0]} scene(s), but there are "
                         f"{V} views in {B} scene(s): give exactly one camera-to-world matrix per view")
    if not torch.isfinite(P).all():
        raise ValueError("camera_poses contains NaN or infinite values")
    R = P[..., :3, :3]
    eye = torch.eye(3, dtype=P.dtype)
    ortho = (R.transpose(-1, -2) @ R - eye).abs().amax(dim=(-1, -2))
    det = torch.linalg.det(R)
    row = (P[..., 3, :] - P.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().amax(dim=-1)
    bad = (ortho > RIGID_TOLERANCE) | ((det - 1).abs() > RIGID_TOLERANCE) | (row > RIGID_TOLERANCE)
    if bad.any():
        b, v = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"camera_poses[{v}] (scene {b}) is not a rigid camera-to-world matrix: "
                         f"max |R^T R - I| = {float(ortho[b, v]):.2g}, det R = {float(det[b, v]):.4g}, "
                         f"last row {P[b, v, 3].tolist()} (need a rotation with det +1, a translation and "
                         f"last row 0 0 0 1; scaled, sheared or mirrored matrices are refused)")
    return P


def given_pose_encoding(camera_poses: torch.Tensor) -> torch.Tensor:
    """Pose encodings ``(B, V, 9)`` float32 ``[T, q (w x y z), 0, 0]`` of given camera-to-world
    poses ``(B, V, 4, 4)``, as the release's known-pose mode (``wpose=True``) derives them:
    in float64, ``P_i = inverse(c2w_0) @ c2w_i`` (pose of camera i in view 0's camera frame,
    no axis change), ``q`` = unit quaternion of its rotation with ``w >= 0``, ``T`` = its
    translation; then float32. ``camera_embed_input`` turns them into ``[q, T / s]`` with
    ``s`` = mean ``|T_i|`` + 1e-8 exactly as for predicted poses, so one rigid motion of all
    poses, or one scale factor on all translations, does not change what the model sees.
    The focal logits are 0 (unused by the embedding)."""
    rel = relative_to_view0(camera_poses.to(torch.float64))
    q = matrix_to_quat(rel[..., :3, :3])
    T = rel[..., :3, 3]
    return torch.cat((T, q, torch.zeros_like(T[..., :2])), dim=-1).float()


# ----------------------------------------------------------------------------- move one camera
def _check_view(view, V: int) -> int:
    if isinstance(view, bool) or not isinstance(view, int) or not 0 <= view < V:
        raise ValueError(f"view must be an int in [0, {V}), got {view!r}")
    return view


def _check_motion(rot_deg, trans) -> list[float]:
    vals = [float(v) for v in (*rot_deg, *trans)]
    if len(vals) != 6 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"rotation (rx, ry, rz degrees) and translation (tx, ty, tz) must be 3 finite numbers "
                         f"each, got {tuple(rot_deg)!r} and {tuple(trans)!r}")
    return vals


def move_camera(c2w: torch.Tensor, view: int, rot_deg=(0.0, 0.0, 0.0), trans=(0.0, 0.0, 0.0),
                frame: str = "camera") -> torch.Tensor:
    """A copy of ``c2w (V, 4, 4)`` with view ``view`` moved by ``D = [R(rot_deg) | trans]``.

    ``frame="camera"``: ``c2w_v @ D`` -- rotate about the camera's own centre and axes (x
    right, y down, z forward) and translate along them (``trans[2] > 0`` moves it forward);
    ``frame="world"``: ``D @ c2w_v`` -- rotate about the world origin and translate in world
    axes. Rotation ``R = Rz Ry Rx`` (:func:`flare_nb.cameras.euler_to_matrix`). Other views are
    untouched. ValueError for a bad view index, non-finite numbers or an unknown frame. Notebook 02.
    """
    if not isinstance(c2w, torch.Tensor) or c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"c2w must be a (V, 4, 4) tensor, got "
                         f"{tuple(c2w.shape) if isinstance(c2w, torch.Tensor) else type(c2w).__name__}")
    V = c2w.shape[0]
    if isinstance(view, bool) or not isinstance(view, int) or not -V <= view < V:
        raise ValueError(f"view must be an int in [0, {V}), got {view!r}")
    vals = _check_motion(rot_deg, trans)
    if frame not in ("camera", "world"):
        raise ValueError(f"frame must be 'camera' or 'world', got {frame!r}")
    D = torch.eye(4, dtype=torch.float64)
    D[:3, :3] = euler_to_matrix(*vals[:3])
    D[:3, 3] = torch.tensor(vals[3:], dtype=torch.float64)
    out = c2w.clone()
    P = c2w[view].to(torch.float64)
    out[view] = (P @ D if frame == "camera" else D @ P).to(c2w.dtype)
    return out


def move_camera_in_encoding(pose_enc: torch.Tensor, view: int, rot_deg=(0.0, 0.0, 0.0),
                            trans=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """Move one view of a pose encoding ``(V, 9)`` by ``D = [R | t]`` in its own camera frame
    (what :func:`move_camera` does to ``c2w`` with ``frame="camera"``); returns a new ``(V, 9)``.

    ``R = Rz Ry Rx`` from ``rot_deg = (rx, ry, rz)`` degrees; ``t = trans`` in units of the
    encoding's mean translation norm (1 for a normalised one). The quaternion becomes ``q dq``
    so its (unnormalised) norm is kept; the translation ``T + m R(q) t``. Other views and the
    focal logits are untouched; all zero returns an exact copy. Notebooks 03, 04 and 08.
    """
    if not isinstance(pose_enc, torch.Tensor) or pose_enc.ndim != 2 or pose_enc.shape[-1] != 9:
        shape = tuple(pose_enc.shape) if isinstance(pose_enc, torch.Tensor) else type(pose_enc).__name__
        V = pose_enc.shape[0] if isinstance(pose_enc, torch.Tensor) and pose_enc.ndim == 2 else "V"
        raise ValueError(f"pose_enc must be a ({V}, 9) pose encoding [T, q, focal logits], got {shape}")
    _check_view(view, pose_enc.shape[0])
    rx, ry, rz, tx, ty, tz = _check_motion(rot_deg, trans)
    out = pose_enc.clone()
    if rx == ry == rz == tx == ty == tz == 0:
        return out
    dq = matrix_to_quat(euler_to_matrix(rx, ry, rz)).to(pose_enc)
    out[view, 3:7] = quat_multiply(pose_enc[view, 3:7], dq)
    R = decode_c2w(pose_enc[view])[:3, :3].to(pose_enc)
    m = pose_enc[:, :3].norm(dim=-1).mean()
    m = m if float(m) > 1e-8 else torch.ones_like(m)
    t = torch.tensor([tx, ty, tz], dtype=pose_enc.dtype, device=pose_enc.device)
    out[view, :3] = pose_enc[view, :3] + m * (R @ t)
    return out


# ----------------------------------------------------------------------------- random pose noise
def perturb_poses(c2w: torch.Tensor, prob: float = 0.6, max_rot_deg: float = 7.5, trans_std: float = 0.05,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Pose-noise augmentation: each view's pose (except view 0, the reference) is perturbed
    with probability ``prob`` by a rotation of uniform random axis and angle in
    ``[-max_rot_deg, max_rot_deg]`` and a translation offset ``N(0, trans_std^2)`` times the
    mean translation norm. The released code uses 7.5 degrees for stage 2 and 5 for stage 3.
    ``c2w (..., V, 4, 4)`` -> same shape, a new tensor.
    """
    shape = c2w.shape[:-2]
    dev, dt = c2w.device, c2w.dtype
    g = generator

    def rand(*s):
        return torch.rand(*s, generator=g).to(dev, dt)

    def randn(*s):
        return torch.randn(*s, generator=g).to(dev, dt)

    axis = F.normalize(randn(*shape, 3), dim=-1)
    angle = (2 * rand(*shape) - 1) * math.radians(max_rot_deg)
    half = angle / 2
    q = torch.cat([torch.cos(half)[..., None], torch.sin(half)[..., None] * axis], -1)
    dR = quat_to_matrix(q)
    scale = c2w[..., :3, 3].norm(dim=-1).mean(-1, keepdim=True).clamp_min(1e-8)
    dt_ = randn(*shape, 3) * trans_std * scale[..., None]
    apply = rand(*shape) < prob
    apply[..., 0] = False
    out = c2w.clone()
    out[..., :3, :3] = torch.where(apply[..., None, None], dR @ c2w[..., :3, :3], c2w[..., :3, :3])
    out[..., :3, 3] = torch.where(apply[..., None], c2w[..., :3, 3] + dt_, c2w[..., :3, 3])
    return out


def perturb_pose_encoding(enc: torch.Tensor, prob: float, max_rot_deg: float, trans_std: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Pose-noise augmentation on pose encodings ``(..., V, 9) = [T, q (w x y z), focal]``.

    Each view except view 0 is, with probability ``prob``, rotated by a random angle in
    ``[-max_rot_deg, max_rot_deg]`` about a random axis and shifted by ``N(0, trans_std^2)``
    times the mean translation norm (:func:`perturb_poses` on the decoded
    camera-to-world poses). The quaternion is multiplied by the noise rotation, so its norm and
    sign are kept; focal logits are untouched. Detached; same shape and dtype. A quaternion of
    (near) zero norm (an untrained pose head) is treated as the identity rotation.
    """
    enc = enc.detach()
    T, q = enc[..., :3].float(), enc[..., 3:7].float()
    n = q.norm(dim=-1, keepdim=True)
    ok = torch.isfinite(q).all(-1, keepdim=True) & (n > 1e-6)
    q_safe = torch.where(ok, q / n.clamp_min(1e-6), torch.tensor([1.0, 0, 0, 0], device=q.device))
    c2w = torch.zeros(*T.shape[:-1], 4, 4, device=T.device)
    c2w[..., :3, :3] = quat_to_matrix(q_safe)
    c2w[..., :3, 3] = T
    c2w[..., 3, 3] = 1
    out = perturb_poses(c2w, prob=prob, max_rot_deg=max_rot_deg, trans_std=trans_std, generator=generator)
    dq = matrix_to_quat(out[..., :3, :3] @ c2w[..., :3, :3].transpose(-1, -2))
    q_new = torch.where(ok, quat_multiply(dq, q), q)
    return torch.cat((out[..., :3, 3], q_new, enc[..., 7:].float()), -1).to(enc.dtype)
