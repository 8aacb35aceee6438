"""``python -m flare_nb.train``: the trainer's command line (:func:`flare_nb.train.trainer.main`)."""
import sys

from flare_nb.train.trainer import main

sys.exit(main())
