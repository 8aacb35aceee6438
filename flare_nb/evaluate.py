"""``python -m flare_nb.evaluate`` runs :func:`flare_nb.eval.evaluate.main` (the module lives in ``flare_nb/eval/``)."""
import sys

from flare_nb.eval.evaluate import main

if __name__ == "__main__":
    main(sys.argv[1:])
