"""Data-parallel erasure on ``torch.distributed``, and randomness keyed by what it is for.

Launched by ``torchrun`` (WORLD_SIZE > 1 in the environment), every rank runs the same trainer on
its share of the global batch. A step's global batch is ``trajectories_per_step`` (G) groups of
``batch_size`` states, each group from its own trajectory, for its own concept and pair; the loss
is the mean of the groups' losses. ``Parallel.share`` says what a rank handles:

- whole groups, when G is a multiple of the world size W: rank r takes groups
  [r*G/W, (r+1)*G/W), samples only their trajectories and computes only their losses (divided by
  G). No activations cross the ranks: every group's loss, Cramér-Wold (a distance between the
  states of one trajectory) included, needs its own states only. This is the scale-out path;
- otherwise slots of every group (``batch_size`` must then split evenly over the ranks): each rank
  samples every group's trajectory (no gradient, replicated) and takes slots [a, b) of each group;
  the predictions of a group are gathered (``gather``: gradients flow back to each rank's own
  slots) and every rank computes the whole loss. G = 1 (the default) on several ranks runs so.

What keeps the result independent of the world size:

- every random draw is keyed, not taken from a shared stream: ``keyed_generator(seed, *key)``
  gives a generator seeded from (seed, draw or trajectory, slot, purpose), so a rank that handles
  a group, or slots [a, b) of it, draws exactly what one process draws for them;
- draws that belong to a whole group (its trajectory, the depths of its states, the pair it
  trains, its sliced Cramér-Wold directions) are keyed without a slot, alike on every rank;
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
class Share:
    """What one rank handles of every step: ``groups`` (their indices in the step) and, of each
    of them, ``slots``. ``by_slots``: the groups are split by slots over the ranks (every rank
    samples every group's trajectory) instead of handed out whole."""

    groups: range
    slots: range
    by_slots: bool = False


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
        """The slots of a group of ``batch`` states this rank handles."""
        if batch % self.world_size:
            raise ConfigError("batch_size", batch, f"does not split evenly over {self.world_size} "
                              "processes", "set trajectories_per_step to a multiple of the "
                              "number of processes (torchrun --nproc_per_node x --nnodes), so "
                              "that each process takes whole trajectories, or batch_size to one")
        share = batch // self.world_size
        return range(self.rank * share, (self.rank + 1) * share)

    def share(self, groups: int, batch: int) -> Share:
        """What this rank handles of a step of ``groups`` groups of ``batch`` states: whole groups
        when they split evenly over the ranks, else slots of every group (see the module
        docstring); a ConfigError when neither splits."""
        if groups % self.world_size == 0:
            n = groups // self.world_size
            return Share(range(self.rank * n, (self.rank + 1) * n), range(batch))
        return Share(range(groups), self.slots(batch), by_slots=True)

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

    def gather_objects(self, obj: object) -> list:
        """Every rank's ``obj`` (picklable, small: CPU tensors, counts), in rank order."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        _collective(dist.all_gather_object, out, obj)
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
            # with CUDA, gloo still carries the CPU tensors (counts, checkpoint parts)
            dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
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
