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
=====================  =====================================================  ==========

Submodules are imported lazily (``import flare_nb.cameras``) so that ``import flare_nb``
stays cheap.
"""

__version__ = "0.1.0"
