"""``python -m flare_nb.eval_report`` runs :func:`flare_nb.eval.report.main` (the module lives in ``flare_nb/eval/``)."""
import sys

from flare_nb.eval.report import main

if __name__ == "__main__":
    main(sys.argv[1:])
