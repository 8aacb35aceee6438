"""flare_nb: the helper package of the FLARE workbook.

Every notebook in ``notebooks/`` imports from here; all the real logic lives in this
package and is tested in ``tests/``. One module per stage of the paper:

=====================  =====================================================  ==========
module                 what                                                   notebook
=====================  =====================================================  ==========
``cameras``            every camera / pose / geometry convention              00
``preprocess``         the official image preprocessing                       00, 08
``scenes``             ``Scene`` and loaders of real posed scenes             00
``synthetic``          procedural multi-view scenes with exact ground truth   00, 06
``viz``                frusta, point clouds (matplotlib and plotly)           all
``config``             model configurations (official_*, tiny*)               01-04
``rope``               2D rotary position embedding                           01
``encoder``            patch tokens and the ViT encoder                       01
``blocks``             attention blocks, camera-token blocks                  01
``pose_predictor``     stage 1: coarse tokens, camera tokens, pose head       02
``camera_centric``     stage 2: pose-conditioned camera-centric geometry      03
``dpt``                DPT pointmap + local-feature head                      03
``global_projector``   stage 3: the learned global projector                  04
``explore``            step-by-step stages, pose perturbation responses       03, 04
``nvs``                NVS model parts (second encoder, intrinsics, head)     05
``shallow_cnn``        the NVS model's image CNN                              05
``gaussian_head``      per-pixel Gaussian parameters and activations          05
``rasterize``          differentiable Gaussian rasterization (gsplat / CPU)   05
``ply``                3DGS and point-cloud PLY files                         05, 08
``render_losses``      MSE, SSIM, depth and perceptual losses                 05, 06
``model``              ``FlareModel``: the whole cascade                      01-08
``reference``          deterministic weights and the parity fixtures          01
``checkpoint``         loading released / trained checkpoints safely          08
``inference``          images in, cameras and pointmaps out                   02-04, 08
``losses``             training losses (pose, confidence geometry, noise)     06
``train``              the trainer (one CPU to many GPUs)                     06
``metrics``            pose AUC/RRA/RTA, pointcloud, PSNR/SSIM/LPIPS          07
``baselines``          COLMAP (pycolmap) baseline                             07
``evaluate``           evaluation protocols and tables                        07
``cli``, ``export``    ``flare-nb`` command, COLMAP / nerfstudio / PLY export 08
``device``             device choice and seeding                              all
``record``             numbers a notebook records for CI                      all
=====================  =====================================================  ==========

Submodules are imported lazily (``import flare_nb.cameras``) so that ``import flare_nb``
stays cheap.
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
