"""Training checkpoints: a long erasure survives a crash and resumes to the same result.

A checkpoint holds the whole ``TrainState`` of a run: the trained tensors, the EMA teacher's
shadow, AdamW's state, the steps done, the loss history, the UNet evaluation counts, and the
trajectory each group's sampler holds (a trajectory serves ``trajectory_reuse`` steps, and a
resumed run continues on it; with ``trajectories_per_step`` > 1 there is one per group, gathered
from the process that samples it, so a run can resume on another number of processes). Every
random draw is keyed by (seed, step, ...), so nothing else is needed for the steps after it to be
the ones an uninterrupted run takes. It records the config's hash and the
base weights' hash, and a resume refuses a checkpoint of other settings or other weights.

The file is ``<output>.ckpt``, written by the first process only, to a temporary file renamed
over the last one (a crash while writing leaves the previous checkpoint whole). The
command line deletes it once the erasure file is written. Not for ``robust=adversarial``, whose
inner attack state it does not hold (refused).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import EraseConfig
from .errors import ConfigError
from .files import replace_whole

if TYPE_CHECKING:
    from .trainer import Run, TrainState

FORMAT = "unlearn.training-checkpoint"
VERSION = 2  # 2: one held trajectory per group (trajectories_per_step)


@dataclass(frozen=True)
class CheckpointPlan:
    """Where the checkpoint lives, how often it is written (0: never) and whether to resume
    from it (when it exists)."""

    path: Path
    every: int = 0
    resume: bool = False

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < total


def checkpoint_path(output: str | os.PathLike) -> Path:
    """The checkpoint of the run that writes ``output``: ``<output>.ckpt`` beside it."""
    out = Path(output)
    return out.with_name(out.name + ".ckpt")


def config_hash(config: EraseConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()


def check_plan(config: EraseConfig, plan: CheckpointPlan) -> None:
    if plan.every < 0:
        raise ConfigError("--checkpoint-every", plan.every, "must be 0 (off) or more",
                          "give a number of steps, e.g. 100")
    if config.robust != "none" and (plan.every or plan.resume):
        raise ConfigError("--checkpoint-every", plan.every, "checkpoints do not hold the "
                          "adversarial inner attack's state (robust=adversarial)",
                          "drop --checkpoint-every and --resume, or set robust to none")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be one (ConfigError naming --resume otherwise)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not torch's format, unreadable
        raise ConfigError("--resume", str(path), f"cannot be read as a training checkpoint "
                          f"({type(e).__name__})", "delete the file and rerun without --resume "
                          "to start afresh") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ConfigError("--resume", str(path), "is not a training checkpoint of this version "
                          "of unlearn", "delete the file and rerun without --resume to start "
                          "afresh")
    return data


def check_resumable(path: Path, config: EraseConfig) -> dict[str, Any]:
    """The checkpoint's data if it was written with ``config``; a ConfigError naming the settings
    that differ otherwise. Cheap: call before loading the model."""
    data = read_checkpoint(path)
    if data["config_sha256"] != config_hash(config):
        saved, now = data["config"], config.to_dict()
        changed = [f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now"
                   for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
        raise ConfigError("--resume", str(path), "the checkpoint was written with other "
                          f"settings ({'; '.join(changed) or 'another version of the config'})",
                          "rerun with the settings it was written with, or drop --resume and "
                          "add --overwrite to start afresh (the checkpoint is replaced)")
    return data


def save_checkpoint(path: Path, run: Run, state: TrainState) -> None:
    """Write ``state`` (every process calls this: the counts are summed; the first writes)."""
    evals = run.parallel.sum(torch.tensor(
        [state.evals.nograd, state.evals.grad, state.evals.adversarial, state.evals.sampling],
        dtype=torch.float64))
    held = {str(g): sampler.state_dict()
            for g, sampler in zip(run.share.groups, run.samplers, strict=True)}
    if not run.share.by_slots:  # each process holds its own groups' trajectories
        held = {g: h for part in run.parallel.gather_objects(held) for g, h in part.items()}
    if not run.parallel.is_main:
        return
    params = list(state.deltas.parameters())
    payload = {
        "format": FORMAT, "version": VERSION,
        "config_sha256": config_hash(run.config), "config": run.config.to_dict(),
        "base_weights_sha256": run.base_hash,
        "step": state.step, "history": list(state.history),
        "checks": [[n, list(found)] for n, found in state.checks],
        "judged": [[n, list(found)] for n, found in state.judged],
        "floors": list(state.floors),
        "evals": [int(v) for v in evals.tolist()],
        "deltas": [p.detach().cpu().clone() for p in params],
        "teacher": [t.detach().cpu().clone() for t in state.teacher],
        "optimizer": state.optimizer.state_dict(),
        "samplers": held,
    }
    replace_whole(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, run: Run, state: TrainState) -> bool:
    """Put the checkpoint at ``path`` into ``state`` (False, nothing changed, if there is none)."""
    if not path.exists():
        return False
    data = check_resumable(path, run.config)
    if data["base_weights_sha256"] != run.base_hash:
        raise ConfigError("--resume", str(path), "the checkpoint was written for other base "
                          "weights (its base-weights hash differs from this model's)",
                          "resume with the model it was made from, or drop --resume and add "
                          "--overwrite to start afresh")
    params = list(state.deltas.parameters())
    with torch.no_grad():
        for p, saved in zip(params, data["deltas"], strict=True):
            p.copy_(saved.to(p.device))
        for t, saved in zip(state.teacher, data["teacher"], strict=True):
            t.copy_(saved.to(t.device))
    state.optimizer.load_state_dict(data["optimizer"])
    state.step, state.history = int(data["step"]), list(data["history"])
    state.checks = [(int(n), list(found)) for n, found in data.get("checks", [])]
    state.judged = [(int(n), list(found)) for n, found in data.get("judged", [])]
    state.floors = [float(f) for f in data.get("floors", [])]
    from .trainer import aim_samplers  # (trainer imports this module)

    aim_samplers(run, state.step)  # the samplers' prompts: the held trajectories'
    for g, sampler in zip(run.share.groups, run.samplers, strict=True):
        sampler.load_state_dict(data["samplers"][str(g)])
    if run.parallel.is_main:  # the counts are every process's, summed: kept once
        (state.evals.nograd, state.evals.grad, state.evals.adversarial,
         state.evals.sampling) = data["evals"]
    return True
