"""The package reads in layers: nothing imports upward, evaluation does not import the trainer.

Layers (README "Layout"), bottom to top: the ground (``cameras``, ``device``, ``viz``), then
``model`` and ``scenes``, then ``render``, then ``inference`` / ``export`` / ``own_images`` / ``pipeline``,
then ``eval`` and ``cli``, then ``train``, then ``nb``. A module may import its own layer or
any layer below it. Read from the source with ``ast``, so an import inside a function counts too.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "flare_nb"

LAYER = {
    "__init__": 0, "cameras": 0, "device": 0, "viz": 0, "camera_rule": 0, "bf16": 0, "panel": 0,
    "model": 1, "scenes": 1,
    "render": 2,
    "inference": 3, "export": 3, "own_images": 3, "pipeline": 3, "outdir": 3, "intrinsics": 3, "video": 3,
    "scene_page": 3, "glb": 3, "nvs_run": 3, "plan": 3,
    "eval": 4, "cli": 4, "demo_synthetic": 4, "evaluate": 4, "nvs_eval": 4, "eval_report": 4,   # the last three: python -m shims
    "train": 5,
    "nb": 6,
}


def _wing(parts: tuple[str, ...]) -> str:
    """``('model', 'flare')`` -> ``'model'``; a root module is its own wing."""
    return parts[0]


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("").parts
        yield path, rel


def _imports(path: Path, rel: tuple[str, ...]):
    """Package-internal imports of one file as tuples of names below ``flare_nb``."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                mod = tuple(base) + tuple((node.module or "").split(".")) if node.module else tuple(base)
            elif node.module and node.module.split(".")[0] == "flare_nb":
                mod = tuple(node.module.split(".")[1:])
            else:
                continue
            if not mod:                                   # from flare_nb import a, b
                for a in node.names:
                    yield node.lineno, (a.name,)
            else:
                yield node.lineno, mod
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "flare_nb" and a.name != "flare_nb":
                    yield node.lineno, tuple(a.name.split(".")[1:])


def _edges():
    for path, rel in _modules():
        for line, mod in _imports(path, rel):
            yield path, line, rel, mod


def test_every_wing_has_a_layer():
    wings = {_wing(rel) for _, rel in _modules()}
    assert wings <= set(LAYER), f"add {sorted(wings - set(LAYER))} to LAYER (and to the README's layout table)"


def test_no_import_runs_upward():
    bad = []
    for path, line, rel, mod in _edges():
        src, dst = _wing(rel), _wing(mod)
        if dst in LAYER and LAYER[dst] > LAYER[src]:
            bad.append(f"{path.relative_to(PKG.parent)}:{line} ({src}, layer {LAYER[src]}) imports "
                       f"flare_nb.{'.'.join(mod)} (layer {LAYER[dst]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("wing", ["eval", "render", "model", "scenes", "cli", "inference", "export", "pipeline"])
def test_below_the_trainer_nothing_imports_it(wing):
    bad = [f"{p.relative_to(PKG.parent)}:{line}" for p, line, rel, mod in _edges()
           if _wing(rel) == wing and _wing(mod) == "train"]
    assert not bad, f"{wing} imports the trainer at " + ", ".join(bad)


def test_the_check_sees_imports():
    """The walk finds imports at all (a guard against a check that cannot fail)."""
    edges = {(rel, mod) for _, _, rel, mod in _edges()}
    assert (("train", "loop"), ("train", "objective")) in edges
    assert any(rel == ("eval", "nvs_eval") and mod == ("render", "targets") for rel, mod in edges)


#: the deliberate exceptions: the command imports the pipeline, the planner and the synthetic demo (and so torch) after
#: parsing its arguments, so that ``--help`` is quick and a Ctrl-C while torch loads ends with one line
#: (exit 130)
DEFERRED = {("cli", "pipeline"), ("cli", "plan"), ("cli", "demo_synthetic")}


def test_package_imports_at_the_top():
    """Imports of the package's own modules sit at the top of each file (optional third-party
    libraries such as gsplat, pycolmap or ipywidgets may still be imported where they are used)."""
    bad = []
    for path, rel in _modules():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("flare_nb")):
                        if (rel[-1], (node.module or "").split(".")[-1]) in DEFERRED:
                            continue
                        bad.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert not bad, "imports inside functions: " + ", ".join(bad)
