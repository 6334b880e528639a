"""How ``unlearn erase`` runs, not what it computes: data-parallel under ``torchrun``, and
checkpoints (``--checkpoint-every``, ``--resume``). None of these change the result, so they are
flags of the command, not ``EraseConfig`` fields.

Under ``torchrun`` (WORLD_SIZE > 1) every process runs the same command on its share of each
step's batch (``unlearn_core.distributed``): whole trajectories when ``trajectories_per_step`` is a
multiple of the number of processes, else a share of every trajectory's states (each process then
samples every trajectory itself: slower; the first process says so). The first process alone
prints progress and writes the file, once every process has reported success; the others end
with exit code 0 and write nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import EraseConfig
from ..errors import ConfigError


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="write the training state to OUTPUT.ckpt every K steps (0 = never); "
                        "deleted once the erasure file is written")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT.ckpt if it exists (it must come from the same "
                        "settings and base model), else start afresh")


@dataclass
class RunPlan:
    parallel: object  # distributed.Parallel
    checkpoint: object  # resume.CheckpointPlan

    @property
    def is_main(self) -> bool:
        return self.parallel.is_main

    def erase_options(self) -> dict:
        return {"parallel": self.parallel, "checkpoint": self.checkpoint}

    def publish(self, write: Callable[[], Path]) -> Path | None:
        """Once every process succeeded, the first writes (``write``) and removes the
        checkpoint; returns the file written (None on the other processes)."""
        from ..distributed import RankFailure, shutdown

        try:
            if not self.parallel.all_succeeded(True):
                raise RankFailure("another process of this run failed; nothing was written")
            if not self.is_main:
                return None
            out = write()
            self.checkpoint.path.unlink(missing_ok=True)
            return out
        finally:
            shutdown()


def world_size() -> int:
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError("WORLD_SIZE", raw, "must be a whole number of processes",
                          "start the command with torchrun, or unset WORLD_SIZE")
    return int(raw)


def plan_run(args: argparse.Namespace, config: EraseConfig, out: Path, device=None) -> RunPlan:
    """Check the run options against the config and the files there (cheap), then join the
    data-parallel run if there is one."""
    from ..distributed import Parallel, from_environment
    from ..resume import CheckpointPlan, check_plan, check_resumable, checkpoint_path

    plan = CheckpointPlan(checkpoint_path(out), args.checkpoint_every, args.resume)
    check_plan(config, plan)
    world = world_size()
    if config.method == "train":  # the batch splits over the processes
        share = Parallel(world, 0).share(config.trajectories_per_step, config.batch_size)
        if share.by_slots and os.environ.get("RANK", "0") == "0":
            print(f"unlearn erase: note: trajectories_per_step = {config.trajectories_per_step} "
                  f"is not a multiple of the {world} processes, so every process samples every "
                  "trajectory (only the states are split). Set trajectories_per_step to a "
                  f"multiple of {world} for each process to sample only its own.", file=sys.stderr)
    if plan.path.exists():
        if plan.resume:
            check_resumable(plan.path, config)
        elif not args.overwrite:
            raise ConfigError("--output", str(out), f"a checkpoint of an earlier run of it "
                              f"exists ({plan.path})", "add --resume to continue that run, or "
                              "--overwrite to start afresh (the checkpoint is replaced)")
    return RunPlan(parallel=from_environment(device), checkpoint=plan)
