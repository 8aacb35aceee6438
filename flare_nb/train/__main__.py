"""``python -m flare_nb.train``: the trainer's command line (:func:`flare_nb.train.launch.main`)."""
import sys

from flare_nb.train.launch import main

sys.exit(main())
