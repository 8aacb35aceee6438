"""Write data/priors/synthetic_priors.json: the constant and per-view pose priors fitted on the
cameras of 512 synthetic training scenes, for forward walks and orbits (the generator's default
40-200 degree spread and the 20-90 degree spread of the shipped tiny models), 2-8 views.
flare_nb.eval.priors.fit_synthetic_priors reads a fit from this table instead of fitting again
(the demo, evaluate, the trainer's validation log); tests/test_priors.py checks an entry against
a fresh fit. Run it again after changing the synthetic generator's cameras.

    python scripts/fit_priors.py            # about 2-4 minutes on one core
"""
import argparse
import time

from flare_nb import data_dir
from flare_nb.eval.priors import PRIOR_TABLE, write_prior_table
from flare_nb.scenes.synthetic import ORBIT_ARC

ARCS = (ORBIT_ARC, (20.0, 90.0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(data_dir() / PRIOR_TABLE), help="the table to write")
    a = p.parse_args(argv)
    settings = [("forward", v, None) for v in range(2, 9)] + [("orbit", v, arc) for arc in ARCS for v in range(2, 9)]
    t0 = time.perf_counter()
    table = write_prior_table(a.out, settings)
    print(f"{len(table['fits'])} fits written to {a.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
