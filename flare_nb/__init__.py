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
``device``             device choice and seeding                              all
``record``             numbers a notebook records for CI                      all
``dpt``                DPT pointmap + local-feature head                      03
``losses``             training losses (pose, confidence geometry, noise)     06
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
