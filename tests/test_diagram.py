"""The architecture diagram's shapes are the shapes of a real forward pass."""
import pytest
import torch

from flare_nb.model.config import official_geometry, tiny
from flare_nb.model.flare import FlareModel
from flare_nb.nb.diagram import cascade_shapes, draw_cascade, forward_shapes


@pytest.mark.parametrize("hw,views", [((128, 192), 3), ((192, 128), 2)])
def test_diagram_shapes_match_a_forward_pass_of_the_tiny_model(hw, views):
    cfg = tiny()
    torch.manual_seed(0)
    model = FlareModel(cfg).eval()
    images = torch.rand(1, views, 3, *hw, generator=torch.Generator().manual_seed(0)) * 2 - 1
    got = forward_shapes(model, images)
    nodes = cascade_shapes(cfg, hw, views)
    assert len({n.key for n in nodes}) == len(nodes) >= 14
    for n in nodes:
        assert n.key in got, n.key
        assert tuple(n.shape) == got[n.key], (n.key, n.shape, got[n.key])


def test_released_shapes():
    shapes = {n.key: n.shape for n in cascade_shapes(official_geometry(), (384, 512), 8)}
    assert shapes["enc_norm_out"] == (8, 768, 1024)            # 24 x 32 tokens of ViT-L
    assert shapes["stage1_coarse_tokens"] == (8, 48, 1024)     # 6 x 8 coarse tokens
    assert shapes["stage2_tokens_last"] == (8, 768, 768)
    assert shapes["pose_enc_stage1"] == (4, 8, 9)
    assert shapes["local_features_global"] == (8, 384, 512, 25)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="multiples of 64"):
        cascade_shapes(official_geometry(), (100, 512), 8)
    with pytest.raises(ValueError, match="views"):
        cascade_shapes(official_geometry(), (384, 512), 1)


def test_draw_cascade_labels_every_shape():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = draw_cascade(official_geometry())
    texts = {t.get_text() for t in fig.axes[0].texts}
    for n in cascade_shapes(official_geometry()):
        assert "(" + ", ".join(str(s) for s in n.shape) + ")" in texts
    plt.close(fig)
