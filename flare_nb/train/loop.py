"""Train FLARE (the tiny model on a laptop CPU, or any size on GPUs): notebook 06.

From a shell::

    python -m flare_nb.train --config configs/tiny_synthetic.yaml [--set optim.lr=1e-3 ...]
    torchrun --nproc_per_node 2 -m flare_nb.train --config ...      # DistributedDataParallel
    python -m flare_nb.train --config ... --nproc 2                  # same, without torchrun

From a notebook: ``result = train(load_config("configs/tiny_synthetic.yaml"))`` (or pass
``dataset=`` any indexable collection of :class:`~flare_nb.scenes.scene.Scene`).

What a run does (config fields in :mod:`flare_nb.train.config`):

* data: synthetic scenes rendered on the fly (:mod:`flare_nb.scenes.synthetic`), or loaded scenes.
  The sample of global position ``p = step * batch_size + slot`` is fixed by ``(seed, p)``
  (one shuffled pass over the dataset per epoch), so the data -- and the pose noise, seeded
  by ``(seed, step, slot)`` -- do not depend on the number of processes or on resuming.
* loss (:mod:`flare_nb.train.losses`): pose loss over every pose-head iteration of both heads +
  geometry loss (camera-centric and global pointmaps), computed per scene and averaged, so
  ``N`` processes with ``batch_size / N`` scenes each give the gradient of one process with
  ``batch_size`` scenes.
* cascade ``stage``: 1 trains pose + geometry (the geometry model, ``model: tiny``); 2 trains
  the NVS model (``model: tiny_nvs``: the same network plus the second image path and the
  Gaussian head), started from a stage-1 checkpoint (``init_from``, :func:`init_weights`), with
  the coarse pose predictor frozen (:func:`frozen_stages`) and a rendering loss added: the
  Gaussians predicted from the context views are rendered into held-out target views
  (:func:`render_targets`) and compared with them (MSE, SSIM, depth; VGG with local weights).
* AdamW (betas 0.9, 0.95; no decay on biases and 1-D parameters), linear warm-up then cosine
  (:func:`lr_factor`), optional gradient clipping; bf16 autocast on CUDA.
* pose noise: the poses fed to stages 2 and 3 are perturbed (:func:`flare_nb.model.pose_encoding.perturb_pose_encoding`)
  through the model's ``pose_noise`` hook (probability 0.6, +-7.5 / +-5 degrees).
* ``out_dir``: ``checkpoint.pt`` (atomic: written to ``checkpoint.pt.tmp`` then
  ``os.replace``; model, optimizer, scheduler, RNG states, step, config), ``log.jsonl`` (one
  JSON record per logged step / validation), ``loss_curves.png``, ``config.yaml``.
* ``run.max_minutes``: after that much wall time the run validates, checkpoints and stops
  (a GPU job with a time limit); the same command resumes it.
* resume (``run.resume: auto``): continues bit-identically from ``checkpoint.pt``; refuses a
  checkpoint written under a different config (every field outside ``run``); Ctrl-C saves
  the last completed step first; a non-finite loss stops the run naming the step and scenes.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from flare_nb.device import autocast_dtype, resolve_device
from flare_nb.train.augment import model_takes_pose_noise, pose_noise_hook
from flare_nb.train.build import build_model, init_weights, select_trainable
from flare_nb.train.config import TrainConfig, config_diff
from flare_nb.train.data import StepBatches, b_to, make_datasets, model_inputs
from flare_nb.train.logs import (LOG_NAME, PLOT_NAME, append_log, plot_curves,
                                 read_log, summarise, write_log)
from flare_nb.train.objective import compute_losses
from flare_nb.train.optim import make_optimizer, remap_optimizer_state
from flare_nb.train.state import (CHECKPOINT_NAME, FORMAT, load_checkpoint,
                                  rng_state, save_checkpoint, set_rng_state)
from flare_nb.train.validate import autocast_context, evaluate, prior_records

__all__ = ["NonFiniteLossError", "TrainResult", "dist_env", "train"]


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN / inf; the message names the step and the scenes."""


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (unwrapped, on its device), the step
    reached, the output folder, the checkpoint path, the logged records and the last validation."""

    model: object
    step: int
    out_dir: Path
    checkpoint: Path
    history: list = field(default_factory=list)
    val: dict = field(default_factory=dict)


def dist_env():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return world, rank, local


def train(cfg: TrainConfig, dataset=None, val_dataset=None, stop_at: int | None = None, callback=None) -> TrainResult:
    """Run (or resume) the training of ``cfg``; see the module docstring.

    Args:
        cfg: a :class:`~flare_nb.train.config.TrainConfig` (e.g. from ``load_config``).
        dataset / val_dataset: optional indexable collections of ``Scene`` (or dicts with
            ``images (V, 3, H, W)`` in [0, 1], ``K``, ``c2w``, ``depth``) replacing ``cfg.data``.
        stop_at: stop (with a checkpoint) after this many steps, as if interrupted; the
            schedule still runs to ``cfg.steps`` and a later call resumes.
        callback: ``callback(record: dict)`` after every step (``kind="train"``) and validation
            (``kind="val"``), e.g. for live plots; it may raise ``KeyboardInterrupt`` to stop.

    Runs under ``torchrun`` (or :func:`launch_ddp`) with one process per ``WORLD_SIZE``: gloo on
    CPU, NCCL on GPUs; ``batch_size`` is the global batch and must divide by the process count.
    """

    cfg = TrainConfig.from_dict(cfg.to_dict()).validate() if isinstance(cfg, TrainConfig) else \
        TrainConfig.from_dict(cfg).validate()
    world, rank, local = dist_env()
    created_pg = False
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if (torch.cuda.is_available() and cfg.run.device != "cpu") else "gloo"
        dist.init_process_group(backend)
        created_pg = True
    if cfg.batch_size % world:
        raise ValueError(f"batch_size = {cfg.batch_size} (the global batch) must be divisible by the "
                         f"number of processes ({world})")
    threads = torch.get_num_threads()
    try:
        return _train(cfg, dataset, val_dataset, stop_at, callback, world, rank, local, resolve_device,
                      autocast_dtype)
    finally:
        torch.set_num_threads(threads)
        if created_pg:
            dist.destroy_process_group()


def _train(cfg, dataset, val_dataset, stop_at, callback, world, rank, local, resolve_device, autocast_dtype):
    try:
        from tqdm.auto import tqdm
    except ImportError:                      # a bare training machine: plain lines instead of a bar
        tqdm = _PlainBar

    t_wall = time.time()
    R = cfg.run
    if R.threads:
        torch.set_num_threads(R.threads)
    device = resolve_device(R.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    amp = {"auto": autocast_dtype(device), "bf16": torch.bfloat16, "off": None}[R.amp]
    out_dir = Path(R.out_dir)
    ck_path = out_dir / CHECKPOINT_NAME
    main_proc = rank == 0
    ddp = world > 1

    def say(msg):
        if main_proc:
            (tqdm.write if R.progress else print)(msg)

    # ------------------------------------------------------------ data
    if dataset is None:
        dataset, val_default = make_datasets(cfg)
        if val_dataset is None:
            val_dataset = val_default
    if val_dataset is None:
        val_dataset = []
    try:
        n = len(dataset)
    except TypeError:
        raise ValueError("dataset must be an indexable collection with len() (a list of Scenes, a "
                         "SyntheticDataset, ...)") from None
    if n == 0:
        raise ValueError("the training dataset is empty: no scene to train on (check data.paths / "
                         "data.train_seeds, or the dataset passed to train())")
    b_local = cfg.batch_size // world
    slots = list(range(rank * b_local, (rank + 1) * b_local))
    steps_ds = StepBatches(dataset, cfg, slots)
    steps_ds[0]                      # fail fast on a malformed scene (one view, no depth, wrong shape)

    # ------------------------------------------------------------ resume
    out_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    resume_from = None
    if R.resume not in (False, None, "auto", "false", "no"):
        resume_from = Path(R.resume)
        if not resume_from.exists():
            raise FileNotFoundError(f"run.resume = {R.resume!r}: no such checkpoint")
    elif ck_path.exists():
        if R.resume == "auto":
            resume_from = ck_path
        else:
            raise FileExistsError(f"{out_dir} already holds a checkpoint ({ck_path}); set run.resume: auto to "
                                  "continue it, or choose another run.out_dir (nothing was overwritten)")
    for stale in sorted(out_dir.glob(CHECKPOINT_NAME + ".tmp*")) if main_proc else ():
        warnings.warn(f"removing {stale}: a checkpoint write that never finished (the run was killed while "
                      f"saving); {ck_path.name} holds the last complete state", stacklevel=2)
        stale.unlink(missing_ok=True)
    ck = None
    if resume_from is not None:
        ck = load_checkpoint(resume_from)
        diff = config_diff(ck["config"], cfg.to_dict())
        if diff:
            raise ValueError(f"cannot resume from {resume_from}: it was written by a run with another "
                             f"configuration ({'; '.join(diff)}). Only run.* settings may change on resume; "
                             "restore the config or start a new run.out_dir")
    # ------------------------------------------------------------ model, optimizer
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    init_note = init_weights(model, cfg.init_from) if (cfg.init_from and ck is None) else None
    model = model.to(device)
    model.train()
    trained, skipped = select_trainable(model, cfg, device)
    released = model.released_names()       # checkpoints and reports use the released names
    opt, sched = make_optimizer(model, cfg)
    if cfg.pose_noise.prob > 0 and not model_takes_pose_noise(model):
        warnings.warn("FlareModel.forward has no pose_noise hook: the pose-noise augmentation is off",
                      stacklevel=2)

    if ck is not None:
        missing, unexpected = model.load_released_state_dict(ck["model"], strict=False)
        if missing or unexpected:
            raise ValueError(f"{resume_from}: model weights do not fit the model (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        opt.load_state_dict(remap_optimizer_state(ck["optimizer"], ck["trained"], model, trained))
        sched.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"])
        start = int(ck["step"])
        say(f"resumed {resume_from} at step {start}/{cfg.steps}")
    history = [r for r in read_log(out_dir / LOG_NAME) if r.get("step", 0) <= start] if start else []
    priors: list[dict] = []
    if main_proc:
        write_log(out_dir / LOG_NAME, history)
        import yaml

        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if init_note:
            say(init_note)
        priors = [r for r in history if r.get("kind") == "prior"]
        if not priors:
            priors = prior_records(cfg, dataset, val_dataset)
            for r in priors:
                history.append(r)
                append_log(out_dir / LOG_NAME, r)
        if priors:
            say("blind priors on the validation scenes (pose L1 / AUC@30): " + ", ".join(
                f"{r['prior']} {r['pose_L1']:.3f} / {r['AUC@30']:.3f}" for r in priors))
        if start == 0:
            say(f"training {sum(model.get_parameter(n).numel() for n in trained):,} parameters "
                f"({len(skipped)} tensors not trained: {summarise([released[n] for n in skipped])}) on {device}"
                f"{f' x {world} processes' if ddp else ''}")
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ddp else model
    takes_noise = model_takes_pose_noise(model)
    params = [p for p in model.parameters() if p.requires_grad]

    def state(step):
        return {"format": FORMAT, "step": step, "config": cfg.to_dict(), "model_config": model.cfg.to_dict(),
                "model": model.released_state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": rng_state(), "world_size": world, "trained": [released[n] for n in trained],
                "time": time.time()}

    saved = [start]

    def checkpoint(step):
        saved[0] = step
        if main_proc:
            save_checkpoint(ck_path, state(step))
            if (out_dir / LOG_NAME).exists():
                plot_curves(out_dir / LOG_NAME, out_dir / PLOT_NAME)
        if ddp:
            dist.barrier()

    last_val: dict = {}

    def validate(step):
        nonlocal last_val
        if main_proc and len(val_dataset):
            last_val = evaluate(model, val_dataset, cfg, device, amp)
            rec = {"kind": "val", "step": step, **last_val}
            history.append(rec)
            append_log(out_dir / LOG_NAME, rec)
            say(f"step {step}: val loss {last_val['loss']:.4f}  RRA@15 {last_val['RRA@15']:.1f}%  "
                f"RTA@15 {last_val['RTA@15']:.1f}%  AUC@30 {last_val['AUC@30']:.3f}  pose L1 {last_val['pose_L1']:.3f}"
                + (f" (best prior {min(r['pose_L1'] for r in priors):.3f})" if priors else "")
                + (f"  PSNR {last_val['psnr']:.2f} dB" if "psnr" in last_val else ""))
            if callback is not None:
                callback(rec)
        if ddp:
            dist.barrier()

    end = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    if start >= cfg.steps:
        say(f"{ck_path} is already at the final step {cfg.steps}: nothing to do")
        return TrainResult(model, start, out_dir, ck_path, history, last_val)
    loader = torch.utils.data.DataLoader(steps_ds, batch_size=None, sampler=range(start, end),
                                         num_workers=R.num_workers, collate_fn=_identity)
    bar = tqdm(total=cfg.steps, initial=start, disable=not (R.progress and main_proc), desc="train",
               dynamic_ncols=True)
    done = start
    updating = False
    t0 = time.time()
    try:
        for step, batch in zip(range(start, end), loader):
            images = batch["images"].to(device) * 2 - 1
            kw = model_inputs(model, batch, device)
            if takes_noise:
                hook = pose_noise_hook(cfg, step, batch["slot"], batch.get("c2w"))
                if hook is not None:
                    kw["pose_noise"] = hook
            if cfg.loss.match_weight > 0:
                kw["local_features"] = True
            with autocast_context(device, amp):
                out = net(images, **kw)
            if cfg.pose_noise.stage3_follow_target and "pose_noise" in kw:
                batch = {**batch, "stage3_true": kw["pose_noise"].stage3_true}
            loss, parts = compute_losses(out, b_to(batch, device), cfg)
            _check_finite(loss, "loss", step, batch, parts, ck_path, saved[0], ddp, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf"))
            _check_finite(gnorm, "gradient norm", step, batch, parts, ck_path, saved[0], ddp, device)
            updating = True
            opt.step()
            sched.step()
            done = step + 1
            updating = False
            vals = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
            if ddp:
                t = torch.tensor(list(vals.values()), dtype=torch.float64, device=device)
                dist.all_reduce(t)
                vals = dict(zip(vals, (t / world).tolist()))
            rec = {"kind": "train", "step": done, **vals, "lr": opt.param_groups[0]["lr"],
                   "grad_norm": float(gnorm), "time": round(time.time() - t0, 3)}
            bar.update(1)
            if done % R.log_every == 0 or done == end:
                history.append(rec)
                if main_proc:
                    append_log(out_dir / LOG_NAME, rec)
                bar.set_postfix(loss=f"{vals['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            if callback is not None and main_proc:
                callback(rec)
            out_of_time = _out_of_time(R.max_minutes, t_wall, ddp, device) and done < end
            if out_of_time and done % R.log_every and done != end:
                history.append(rec)
                if main_proc:
                    append_log(out_dir / LOG_NAME, rec)
            if R.val_every and done % R.val_every == 0 and done < cfg.steps or out_of_time:
                validate(done)
            if done < cfg.steps and (done % R.ckpt_every == 0 or done == end or out_of_time):
                checkpoint(done)
            if out_of_time:
                say(f"run.max_minutes = {R.max_minutes} reached at step {done}/{cfg.steps}: saved {ck_path}; "
                    "run the same command again to continue")
                break
    except KeyboardInterrupt:
        bar.close()
        if not updating and done > start:
            checkpoint(done)
            say(f"interrupted: saved the last completed step {done} to {ck_path}; run the same command "
                "again (run.resume: auto) to continue")
        else:
            say(f"interrupted at step {done}; {ck_path} is unchanged")
        raise
    bar.close()
    if done == cfg.steps:
        validate(done)
        checkpoint(done)
        say(f"finished {cfg.steps} steps in {time.time() - t0:.0f} s; checkpoint {ck_path}")
    return TrainResult(model, done, out_dir, ck_path, history, last_val)


def _check_finite(value, what, step, batch, parts, ck_path, last_ck, ddp, device):
    ok = torch.isfinite(value.detach()).all()
    flag = torch.tensor([1.0 if bool(ok) else 0.0], device=device)
    if ddp:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if flag.item() < 1:
        if bool(ok):
            raise NonFiniteLossError(f"the {what} became NaN/inf in another process at step {step}; "
                                     f"see that process's message")
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
        raise NonFiniteLossError(
            f"the {what} is {float(value.detach())} (not finite) at step {step} (terms: {terms}); batch scenes "
            f"{batch['source']} (dataset indices {batch['index']}). Training stopped before the update: "
            f"the last checkpoint ({ck_path}, step {last_ck}) is intact. Check those scenes, or lower optim.lr")


def _identity(x):
    return x


def _out_of_time(max_minutes, t_wall, ddp, device) -> bool:
    """Whether ``run.max_minutes`` of wall time have passed since the run started (every process
    takes rank 0's decision, so they stop at the same step)."""
    if not max_minutes:
        return False
    if not ddp:
        return time.time() - t_wall >= 60.0 * max_minutes
    flag = torch.tensor([1.0 if time.time() - t_wall >= 60.0 * max_minutes else 0.0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item() > 0)


class _PlainBar:
    """Stands in for tqdm where it is not installed: no bar, messages printed as lines."""

    def __init__(self, *args, **kwargs):
        pass

    write = staticmethod(print)

    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass
