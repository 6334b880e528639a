"""Data-parallel erasure on ``torch.distributed``, and randomness keyed by what it is for.

Launched by ``torchrun`` (WORLD_SIZE > 1 in the environment), every rank runs the same trainer on
its share of the global batch: ``config.batch_size`` slots per step, slots [a, b) on a rank. What
keeps the result independent of the world size:

- every random draw is keyed, not taken from a shared stream: ``keyed_generator(seed, *key)``
  gives a generator seeded from (seed, step or trajectory, slot, purpose), so a rank that handles
  slots [a, b) draws exactly what one process draws for those slots;
- draws that belong to the whole step (the trajectory, the depths of its states, the pair trained,
  the sliced Cramér-Wold directions) are keyed without a slot and drawn alike on every rank; the
  states of one step come from one shared trajectory, which every rank samples (no gradient);
- the loss is computed on the whole batch on every rank (``gather``: the predictions of all
  slots, gradients flowing back to each rank's own slots only), so Cramér-Wold, a distance between
  sets, is the single-process one too;
- the gradients of the trained tensors are summed across ranks (``reduce_gradients``) before
  clipping and AdamW, so every rank takes the same step and keeps the same EMA teacher.

Why an explicit all-reduce, not DistributedDataParallel: DDP wraps a module that owns the trained
parameters and runs its forward; here the trained tensors live in a ``DeltaSet`` hooked into a
frozen UNet the trainer calls directly (and with the teacher's tensors swapped in for sampling), so
there is no module whose forward DDP could wrap, and its bucketing would buy little for tensors
this small.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError, UnlearnError

Tensor = torch.Tensor

TIMEOUT_ENV = "UNLEARN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


class RankFailure(UnlearnError):
    """Another process of a data-parallel run failed or was stopped; nothing was written."""


def key_seed(seed: int, *key: object) -> int:
    """A 63-bit seed from (seed, key...), e.g. (seed, "timestep", step, slot)."""
    text = "/".join(str(k) for k in (seed, *key)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def keyed_generator(seed: int, *key: object) -> torch.Generator:
    """A CPU generator seeded from (seed, key...): the same key gives the same draws anywhere."""
    return torch.Generator().manual_seed(key_seed(seed, *key))


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run (world_size 1: a plain single process)."""

    world_size: int = 1
    rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def slots(self, batch: int) -> range:
        """The slots of the global batch this rank handles."""
        if batch % self.world_size:
            raise ConfigError("batch_size", batch, f"does not split evenly over {self.world_size} "
                              "processes", "set batch_size to a multiple of the number of "
                              "processes (torchrun --nproc_per_node x --nnodes)")
        share = batch // self.world_size
        return range(self.rank * share, (self.rank + 1) * share)

    def gather(self, x: Tensor) -> Tensor:
        """The rows of every rank, in slot order. Gradient flows back to this rank's rows only:
        every rank computes the same loss of the gathered rows, so its own rows' gradient is
        already the whole batch's."""
        if not self.active:
            return x
        return _Gather.apply(x, self.world_size, self.rank)

    def reduce_gradients(self, params: list[Tensor]) -> None:
        """Sum each trained tensor's gradient over the ranks, in place (one flat all-reduce)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        _collective(dist.all_reduce, flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over the ranks (a copy; float64 keeps counts exact)."""
        out = values.detach().clone()
        if self.active:
            _collective(dist.all_reduce, out)
        return out

    def all_succeeded(self, ok: bool) -> bool:
        """True when every rank reports ``ok``; a rank that died makes this raise RankFailure."""
        return int(self.sum(torch.tensor([0.0 if ok else 1.0], dtype=torch.float64))) == 0


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, world: int, rank: int) -> Tensor:
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        _collective(dist.all_gather, parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


def _collective(fn, *args) -> None:
    try:
        fn(*args)
    except RuntimeError as e:  # gloo/NCCL: a peer closed its connection, or the timeout passed
        raise RankFailure(
            f"another process of this data-parallel run failed or stopped ({_first_line(e)}); "
            "nothing was written. Fix: read the failing process's own message above, fix its "
            "cause and rerun (add --resume to continue from the last checkpoint)") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(TIMEOUT_ENV, raw, "must be a number of seconds above 0",
                          f"set {TIMEOUT_ENV} to e.g. {DEFAULT_TIMEOUT_S:.0f}, or unset it")
    return value


def from_environment(device: torch.device | None = None) -> Parallel:
    """Join the run ``torchrun`` started (WORLD_SIZE > 1): NCCL for CUDA devices, gloo otherwise,
    with a timeout on the rendezvous and every collective (``UNLEARN_DIST_TIMEOUT`` seconds). A
    plain process (no WORLD_SIZE, or 1) gets ``Parallel()`` and starts nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Parallel()
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(seconds=timeout_seconds())
        try:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        except (RuntimeError, ValueError) as e:
            raise RankFailure(f"could not join the data-parallel run ({_first_line(e)}). Fix: "
                              "start every process with the same torchrun rendezvous flags, "
                              "and check the network between the machines") from e
        _stop_on_sigterm()
    return Parallel(world_size=world, rank=rank)


def _stop_on_sigterm() -> None:
    """torchrun stops the other workers with SIGTERM when one fails: end with a message (and
    write nothing) instead of dying silently."""
    def handler(signum, frame):
        raise RankFailure("stopped by the launcher because another process of this "
                          "data-parallel run failed; nothing was written. Fix: read the failing "
                          "process's own message, fix its cause and rerun (add --resume to "
                          "continue from the last checkpoint)")

    signal.signal(signal.SIGTERM, handler)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
