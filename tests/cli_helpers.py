"""Helpers for tests that run ``flare-nb`` in-process (``flare_nb.cli.main``)."""
import contextlib

import torch

from flare_nb import cli


@contextlib.contextmanager
def one_torch_thread():
    """One torch thread inside the block (tiny tensors: as fast, and far faster on a shared
    machine), the previous count restored after it; for module-scoped fixtures, where the
    function-scoped ``one_thread`` fixture of ``conftest.py`` cannot serve."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def run_cli(argv, capsys):
    """``(exit code, stdout, stderr)`` of ``flare-nb argv``; argparse's own errors (``SystemExit``,
    one line, status 2: ``cli._Parser.error``) count as an exit code too."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def cli_error(argv, capsys, *needles):
    """Run ``flare-nb argv``, assert it exits 2 with exactly one ``flare-nb: error:`` line, no
    traceback, and every ``needle`` in that line; returns the line."""
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2, (out, err)
    lines = [l for l in err.splitlines() if l.startswith("flare-nb: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def finished_case(r: dict, status: int):
    """The common checks of one recorded ``flare-nb`` run ``r`` (a dict with ``rc``, ``stdout``,
    ``stderr``, as the case tables of ``test_bad_input`` and ``test_userpath`` record them): the
    exit code is ``status``, no traceback anywhere. Returns ``(error lines, stderr, stdout)``."""
    err, out = r["stderr"], r["stdout"]
    assert r["rc"] == status, (r["rc"], out[-2000:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, err
    return [line for line in err.splitlines() if line.startswith("flare-nb: error:")], err, out
