"""``python -m flare_nb.nvs_eval`` runs :func:`flare_nb.eval.nvs_eval.main` (the module lives in ``flare_nb/eval/``)."""
import sys

from flare_nb.eval.nvs_eval import main

if __name__ == "__main__":
    main(sys.argv[1:])
