"""``pose_noise.stage3_gt_prob``: the pose fed to stage 3 replaced by the ground truth (flare_nb.train.augment)."""
import math

import pytest
import torch

from flare_nb.cameras import matrix_to_quat
from flare_nb.train.augment import gt_pose_encoding, pose_noise_hook
from flare_nb.train.config import TrainConfig
from flare_nb.train.losses import gt_pose_targets


EPS64 = 256 * torch.finfo(torch.float64).eps    # a few float64 matrix products on values of order 1-10


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


# ---------------------------------------------------------------- pose_noise.stage3_follow_target

def test_follow_target_poses_inverts_the_pose_targets():
    from flare_nb.cameras import relative_to_view0
    from flare_nb.train.losses import follow_target_poses

    c2w = _c2w(B=3, V=4, seed=2).double()
    rel = torch.stack([relative_to_view0(p) for p in c2w])
    back = follow_target_poses(gt_pose_encoding(c2w, torch.zeros(3, 4, 9, dtype=torch.float64)), c2w)
    assert back.dtype == torch.float64 and back.shape == (3, 4, 4, 4)
    assert torch.allclose(back, rel, atol=EPS64)
    with pytest.raises(ValueError, match="do not match"):
        follow_target_poses(torch.zeros(3, 2, 9), c2w)


def test_follow_target_poses_are_the_turned_camera_and_what_stage_3_is_fed():
    from flare_nb.cameras import normalize_translation, relative_to_view0
    from flare_nb.model.camera_centric import camera_embed_input
    from flare_nb.model.pose_encoding import move_camera, move_camera_in_encoding
    from flare_nb.train.losses import follow_target_poses

    c2w = _c2w(B=1, V=4, seed=4).double()
    rel = relative_to_view0(c2w[0])
    enc = gt_pose_encoding(c2w, torch.zeros(1, 4, 9, dtype=torch.float64))
    turned = move_camera_in_encoding(enc[0], 2, rot_deg=(0.0, 10.0, 0.0))[None]
    # a pure turn keeps the translations: the target pose is the true one turned about its own centre
    assert torch.allclose(follow_target_poses(turned, c2w)[0], move_camera(rel, 2, rot_deg=(0.0, 10.0, 0.0)),
                          atol=EPS64)
    # a moved view changes the mean translation norm; the target follows the translations stage 3 is fed
    moved = turned.clone()
    moved[0, 3, :3] = moved[0, 3, :3] * 1.3
    scale = normalize_translation(rel[None])[1]
    fed = camera_embed_input(moved, eps=0.0).double()[..., 4:7] * scale
    eps32 = torch.finfo(torch.float32).eps                       # camera_embed_input works in float32
    assert torch.allclose(follow_target_poses(moved, c2w)[..., :3, 3], fed, atol=16 * eps32 * float(fed.abs().max()))
    assert torch.allclose(follow_target_poses(moved * torch.tensor([2.0] * 3 + [1.0] * 6, dtype=torch.float64), c2w),
                          follow_target_poses(moved, c2w), atol=EPS64)     # a common scale of T is invisible


def test_follow_target_moves_the_global_target_with_the_given_pose_only():
    from flare_nb.model.pose_encoding import move_camera_in_encoding
    from flare_nb.train.losses import follow_target_poses, geometry_loss

    c2w = _c2w(B=1, V=3, seed=3)
    g = torch.Generator().manual_seed(0)
    gt_cam = torch.randn(1, 3, 4, 5, 3, generator=g) + torch.tensor([0.0, 0.0, 4.0])
    valid = torch.ones(1, 3, 4, 5, dtype=torch.bool)
    conf = torch.ones(1, 3, 4, 5)
    enc = gt_pose_encoding(c2w, torch.zeros(1, 3, 9))
    turned = move_camera_in_encoding(enc[0], 1, rot_deg=(0.0, 10.0, 0.0))[None]
    rel_t = follow_target_poses(turned, c2w)
    rel = follow_target_poses(enc, c2w)
    from flare_nb.cameras import transform_points
    placed = transform_points(rel_t[:, :, None], gt_cam)            # what a stage 3 that follows would output
    truth = transform_points(rel[:, :, None], gt_cam)
    assert torch.equal(placed[:, [0, 2]], truth[:, [0, 2]]) and not torch.allclose(placed[:, 1], truth[:, 1])
    _, follow = geometry_loss(None, None, placed, conf, gt_cam, c2w, valid, rel_global=rel_t)
    _, plain = geometry_loss(None, None, placed, conf, gt_cam, c2w, valid)
    eps = 64 * torch.finfo(torch.float32).eps                      # float32 round-off of a few matrix products
    assert follow["err_global"] < eps < plain["err_global"]
    # the camera-centric term keeps the ground truth
    a = geometry_loss(gt_cam, conf, placed, conf, gt_cam, c2w, valid, rel_global=rel_t)[1]["err_cam"]
    assert a < eps


def test_the_hook_keeps_what_it_fed_stage_3_for_the_true_pose_scenes():
    c2w, enc = _c2w(B=16, seed=1), torch.randn(16, 3, 9)
    slots = list(range(40, 56))                                 # global slots differ from the local indices
    exact = pose_noise_hook(_cfg(prob=0.0, stage3_gt_prob=0.5, stage3_follow_target=True), 3, slots, c2w)
    fed = exact(enc, 3)
    gt = gt_pose_encoding(c2w, enc)
    took_gt = {i for i in range(16) if torch.equal(fed[i], gt[i])}
    assert 0 < len(took_gt) < 16 and set(exact.stage3_true) == took_gt           # keyed by local index
    assert all(torch.equal(exact.stage3_true[i], gt[i]) for i in took_gt)
    noisy = pose_noise_hook(_cfg(prob=1.0, stage3_gt_prob=0.5, stage3_follow_target=True), 3, slots, c2w)
    fed = noisy(enc, 3)
    assert set(noisy.stage3_true) == took_gt                   # the same draw decides, before the noise
    assert all(torch.equal(noisy.stage3_true[i], fed[i]) and not torch.equal(fed[i], gt[i]) for i in took_gt)
    noisy(enc, 2)
    assert set(noisy.stage3_true) == took_gt                   # stage 2 leaves stage 3's record alone


def test_follow_target_is_validated():
    with pytest.raises(ValueError, match="stage3_follow_target.*stage3_gt_prob > 0"):
        _cfg(stage3_follow_target=True).validate()
    with pytest.raises(ValueError, match="stage3_follow_target"):
        _cfg(stage3_gt_prob=0.5, stage3_follow_target="yes").validate()
    on = {"pose_noise": {"stage3_gt_prob": 0.5, "stage3_follow_target": True}}
    TrainConfig.from_dict(on).validate()
    with pytest.raises(ValueError, match="stage3_follow_target.*without pose conditioning"):
        TrainConfig.from_dict({**on, "model_overrides": {"pose_conditioning": False}}).validate()
    with pytest.raises(ValueError, match="stage3_follow_target.*stage 2"):
        TrainConfig.from_dict({**on, "stage": 2, "model": "tiny_nvs"}).validate()


def test_follow_target_reaches_the_global_loss_of_a_training_step(tmp_path):
    from flare_nb.train.logs import read_log
    from flare_nb.train.loop import train

    def first(follow):
        cfg = TrainConfig().replace(**{
            "steps": 1, "batch_size": 2, "data.n_views": 2, "data.size": [64, 64], "data.train_seeds": [0, 2],
            "data.val_seeds": [], "run.out_dir": str(tmp_path / str(follow)), "run.progress": False,
            "run.val_every": 0, "run.log_every": 1, "run.threads": 1, "run.device": "cpu", "pose_noise.prob": 1.0,
            "pose_noise.stage3_gt_prob": 1.0, "pose_noise.stage3_follow_target": follow}).validate()
        train(cfg)
        return [r for r in read_log(tmp_path / str(follow) / "log.jsonl") if r.get("kind") == "train"][0]

    on, off = first(True), first(False)
    assert on["geo_cam"] == off["geo_cam"] and on["pose"] == off["pose"]     # same weights, data and noise
    assert on["geo_global"] != off["geo_global"]
