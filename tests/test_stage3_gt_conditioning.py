"""``pose_noise.stage3_gt_prob``: the pose fed to stage 3 replaced by the ground truth (flare_nb.train.augment)."""
import math

import pytest
import torch

from flare_nb.cameras import matrix_to_quat
from flare_nb.train.augment import gt_pose_encoding, pose_noise_hook
from flare_nb.train.config import TrainConfig
from flare_nb.train.losses import gt_pose_targets


def _c2w(B=2, V=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = torch.eye(4).repeat(B, V, 1, 1)
    for b in range(B):
        for v in range(V):
            a = float(torch.rand((), generator=g)) * math.pi / 2
            c, s = math.cos(a), math.sin(a)
            out[b, v, :3, :3] = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
            out[b, v, :3, 3] = torch.randn(3, generator=g)
    return out


def _cfg(**pn):
    return TrainConfig.from_dict({"pose_noise": pn})


def test_gt_pose_encoding_is_the_pose_loss_target_with_the_predicted_focal():
    c2w = _c2w()
    like = torch.randn(2, 3, 9)
    enc = gt_pose_encoding(c2w, like)
    T, q = gt_pose_targets(c2w)
    assert enc.shape == (2, 3, 9)
    assert torch.equal(enc[..., :3], T) and torch.equal(enc[..., 3:7], q)
    assert torch.equal(enc[..., 7:], like[..., 7:])
    assert torch.allclose(enc[:, 0, 3:7], matrix_to_quat(torch.eye(3)).expand(2, 4), atol=1e-6)   # view 0 = identity


def test_stage3_gt_prob_one_feeds_the_ground_truth_to_stage_3_only():
    c2w, enc = _c2w(), torch.randn(2, 3, 9)
    hook = pose_noise_hook(_cfg(prob=0.0, stage3_gt_prob=1.0), 5, [0, 1], c2w)
    assert torch.equal(hook(enc, 3), gt_pose_encoding(c2w, enc))
    assert torch.equal(hook(enc, 2), enc)


def test_stage3_gt_prob_zero_is_the_released_augmentation():
    c2w, enc = _c2w(), torch.randn(2, 3, 9)
    cfg = _cfg(prob=0.6)
    a = pose_noise_hook(cfg, 7, [0, 1], c2w)(enc, 3)
    b = pose_noise_hook(cfg, 7, [0, 1], None)(enc, 3)
    assert torch.equal(a, b)
    assert pose_noise_hook(_cfg(prob=0.0), 7, [0, 1], c2w) is None


def test_stage3_gt_prob_half_mixes_per_scene_and_is_seeded():
    c2w, enc = _c2w(B=16, seed=1), torch.randn(16, 3, 9)
    cfg = _cfg(prob=0.0, stage3_gt_prob=0.5)
    out = pose_noise_hook(cfg, 3, list(range(16)), c2w)(enc, 3)
    gt = gt_pose_encoding(c2w, enc)
    took_gt = [bool(torch.equal(out[i], gt[i])) for i in range(16)]
    kept = [bool(torch.equal(out[i], enc[i])) for i in range(16)]
    assert all(a != b for a, b in zip(took_gt, kept))          # each scene: one or the other
    assert 0 < sum(took_gt) < 16
    again = pose_noise_hook(cfg, 3, list(range(16)), c2w)(enc, 3)
    assert torch.equal(out, again)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "half"])
def test_stage3_gt_prob_is_validated(bad):
    with pytest.raises(ValueError, match="stage3_gt_prob"):
        _cfg(stage3_gt_prob=bad).validate()
