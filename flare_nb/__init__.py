"""flare_nb: the helper package of the FLARE workbook.

Every notebook in ``notebooks/`` imports from here; all the real logic lives in this
package and is tested in ``tests/``. It is built in wings, each importing only its own layer
or the layers below it (``tests/test_layering.py``):

=====  =================================================  ==========================================
layer  wing                                               what
=====  =================================================  ==========================================
0      ``cameras``, ``device``, ``viz``                   conventions, devices and seeding, plots
1      ``model/``                                         the network, the pose codec, checkpoints
1      ``scenes/``                                        scenes, synthetic data, preprocessing
2      ``render/``                                        rasterizer, splats, prediction-frame renders
3      ``inference``, ``export``, ``own_images``,         photos in, files out
       ``pipeline``
4      ``eval/``, ``cli``                                 metrics, baselines, protocols; ``flare-nb``
5      ``train/``                                         the trainer, one module per concern
6      ``nb/``                                            widgets and explorers of the notebooks
=====  =================================================  ==========================================

Submodules are imported explicitly (``from flare_nb.model.flare import FlareModel``) so that
``import flare_nb`` stays cheap.
"""

__version__ = "0.1.0"


def data_dir():
    """The workbook's ``data/`` folder (sample scenes, fixtures, checkpoints).

    ``$FLARE_NB_DATA`` overrides it; otherwise it is the ``data/`` folder next to the
    package (the repository layout, with ``pip install -e .``).
    """
    import os
    from pathlib import Path

    d = Path(os.environ.get("FLARE_NB_DATA", Path(__file__).resolve().parents[1] / "data"))
    if not d.is_dir():
        raise FileNotFoundError(f"data folder not found at {d}: run from a clone of the workbook "
                                "(pip install -e .) or set FLARE_NB_DATA to its data/ folder")
    return d
