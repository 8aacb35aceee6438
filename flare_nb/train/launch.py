"""Starting a run: several processes on one machine (:func:`launch_ddp`, DistributedDataParallel
with gloo / NCCL) and the command line ``python -m flare_nb.train`` (:func:`main`)."""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

import torch

from flare_nb.train.config import TrainConfig, load_config
from flare_nb.train.logs import LOG_NAME, read_log
from flare_nb.train.loop import train

__all__ = ["launch_ddp", "main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGTERM this process when its parent dies, so the workers of
    :func:`launch_ddp` do not train on as orphans when the launching process is killed (the
    last checkpoint stays intact: writes are atomic). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))      # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, stop_at, threads: int):
    _die_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    if threads:
        torch.set_num_threads(threads)
    train(TrainConfig.from_dict(cfg_dict), stop_at=stop_at)


def launch_ddp(cfg: TrainConfig, nproc: int, stop_at: int | None = None, threads: int = 1) -> None:
    """Train ``cfg`` with ``nproc`` local processes (DistributedDataParallel; gloo on CPU) via
    ``torch.multiprocessing.spawn`` -- the notebook-friendly equivalent of ``torchrun
    --nproc_per_node nproc``. Results are in ``cfg.run.out_dir``."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    mp.spawn(_ddp_worker, args=(nproc, _free_port(), cfg.to_dict(), stop_at, threads), nprocs=nproc, join=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flare_nb.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML config (e.g. configs/tiny_synthetic.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=1e-3 --set run.out_dir=runs/x")
    p.add_argument("--nproc", type=int, default=1, help="local processes (DDP, gloo on CPU) without torchrun")
    p.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) after this step")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.set)
        if a.nproc > 1:
            launch_ddp(cfg, a.nproc, a.stop_at, threads=cfg.run.threads or 1)
            recs = [r for r in read_log(Path(cfg.run.out_dir) / LOG_NAME) if r.get("kind") == "val"]
            if recs:
                print(json.dumps(recs[-1]))
        else:
            res = train(cfg, stop_at=a.stop_at)
            if res.val and int(os.environ.get("RANK", "0")) == 0:
                print(json.dumps({"step": res.step, **res.val}))
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
