"""The training log (``log.jsonl``, one JSON record per logged step / validation) and the loss
curves drawn from it (notebook 06)."""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["LOG_NAME", "PLOT_NAME", "read_log", "plot_curves", "summarise", "write_log", "append_log"]


LOG_NAME = "log.jsonl"


PLOT_NAME = "loss_curves.png"


def read_log(path) -> list[dict]:
    """The records of a ``log.jsonl`` (``[]`` when absent)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log_path, png_path=None):
    """Loss curves of a run (train loss, its parts, validation loss and pose accuracy, with the
    blind priors' AUC@30 as horizontal lines when the log has them) from its ``log.jsonl``; saved
    atomically to ``png_path`` when given. Returns the matplotlib figure."""
    from matplotlib.figure import \
        Figure  # no pyplot: leaves a notebook's backend alone

    recs = read_log(log_path)
    tr = [r for r in recs if r.get("kind") == "train"]
    va = [r for r in recs if r.get("kind") == "val"]
    fig = Figure(figsize=(11, 4))
    ax, ax2 = fig.subplots(1, 2)
    for key, style in (("loss", "-"), ("pose", "--"), ("geometry", ":"), ("render", "-."), ("match", (0, (1, 3)))):
        pts = [(r["step"], r[key]) for r in tr if key in r]
        if pts:
            ax.plot(*zip(*pts), ls=style, label=f"train {key}")
    if va:
        ax.plot([r["step"] for r in va], [r["loss"] for r in va], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    if tr and min(r["loss"] for r in tr) > 0:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    for key in ("RRA@15", "RTA@15", "AUC@30", "psnr"):
        pts = [(r["step"], r[key] * (100 if key.startswith("AUC") else 1)) for r in va if key in r]
        if pts:
            ax2.plot(*zip(*pts), "o-", label={"AUC@30": "AUC@30 x100", "psnr": "target PSNR dB"}.get(key, key + " %"),
                     **({"color": "C2"} if key == "AUC@30" else {}))
    colours = {"AUC@30": "C2", "pose_L1": "C3"}
    for r in (r for r in recs if r.get("kind") == "prior" and "AUC@30" in r):     # blind priors: the bar to beat
        style = {"straight": ":", "constant": "--", "per_view": "-."}.get(r.get("prior"), ":")
        ax2.axhline(100 * r["AUC@30"], color=colours["AUC@30"], ls=style, lw=1,
                    label=f"AUC@30 x100 of the {r.get('prior')} prior")
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 100)
    ax2.set_title("validation: pose accuracy" + (", novel views" if any("psnr" in r for r in va) else ""))
    if va:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    if png_path is not None:
        png_path = Path(png_path)
        tmp = png_path.with_name(png_path.name + ".tmp")
        fig.savefig(tmp, format="png", dpi=90)
        os.replace(tmp, png_path)
    return fig


def summarise(names: list[str]) -> str:
    groups: dict[str, int] = {}
    for n in names:
        key = ".".join(n.split(".")[:2]) if "head_local_features" in n else n.split(".")[0]
        if "head_local_features" in n:
            key = n.split(".")[0] + ".head_local_features"
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{k} ({v})" for k, v in groups.items()) or "none"


def write_log(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def append_log(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
