"""Novel-view evaluation (flare_nb.eval.nvs_eval): rows, the nearest-view floor, bad input."""
import math

import pytest
import torch

from flare_nb.model import config as mc
from flare_nb.eval.metrics import psnr
from flare_nb.model.flare import FlareModel
from flare_nb.eval.nvs_eval import evaluate_novel_views, main
from flare_nb.scenes.synthetic import make_scene


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return FlareModel(mc.tiny_nvs()).eval(), FlareModel(mc.tiny()).eval()


def test_rows_for_every_method_and_the_nearest_view_floor(models):
    nvs, geo = models
    rows = evaluate_novel_views(nvs, geo, [1_000_003], n_views=2, n_targets=1, size=(64, 64), modes=["forward"])
    assert [r["method"] for r in rows] == ["flare-nvs", "pointmap-splats", "nearest-view"]
    assert all(math.isfinite(r["PSNR"]) and -1 <= r["SSIM"] <= 1 and r["size"] == "64x64" for r in rows)
    # 3-view forward walk: views 0 and 2 are the context, view 1 the target; view 0 or 2 is nearest
    scene = make_scene(1_000_003, 3, 64, "forward")
    c = scene.c2w[:, :3, 3]
    near = 0 if (c[1] - c[0]).norm() <= (c[1] - c[2]).norm() else 2
    want = float(psnr(scene.images[[near]], scene.images[[1]]))
    assert abs(rows[-1]["PSNR"] - want) < 1e-4


def test_bad_input(models):
    nvs, geo = models
    with pytest.raises(ValueError, match="NVS model"):
        evaluate_novel_views(geo, None, [1_000_000], size=(64, 64))
    with pytest.raises(ValueError, match="geometry model"):
        evaluate_novel_views(None, nvs, [1_000_000], size=(64, 64))
    with pytest.raises(ValueError, match="training seeds"):
        evaluate_novel_views(None, None, [5], size=(64, 64))
    with pytest.raises(SystemExit, match="not found"):
        main(["--nvs-checkpoint", "no/such.pt", "--scenes", "1"])
