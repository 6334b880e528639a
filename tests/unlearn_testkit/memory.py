"""How much memory a training run may add, from what it computes, and the process's peak RSS.

``training_bound`` is the one rule: the full-size node test (slow, ComfyUI, 3.4 GB fixture) and a
fast tiny-UNet test assert the same thing with it.

What a run holds on top of what was resident before it (float32 throughout):

- ``cloned_base_bytes``: the base weights cloned for the run. The nodes clone every weight of the
  ComfyUI UNet out of inference mode (``nodes/host._normal_weights``: autograd cannot save
  inference tensors); a diffusers UNet is not cloned (0).
- trained parameters x 4 B x ``TRAINED_COPIES``: the delta itself, its gradient, AdamW's two
  moments, the EMA teacher's shadow (swapped in by exchanging storages, no copy) and the result's
  copy (``Delta.export`` clones while the training state is still alive).
- ``activation_bytes``: what one forward with grad keeps for backward. Bounded by
  ``SAVED_PER_OUTPUT`` x the bytes of every leaf module's output in one forward at the training
  shape (``forward_output_bytes``): an op saves its inputs and sometimes its output, and the
  inputs of one leaf module are outputs of the one before; the 4 also covers what ops inside a
  module keep that is no module's output (attention probabilities, GEGLU halves, norm statistics),
  each at most the size of the attention or norm's output at these shapes. The no-grad passes
  (sampling, the targets) free theirs as they go and are each smaller than this.
- ``margin``: what the process adds that no tensor of the run accounts for (the allocator's
  arenas keeping freed blocks, per-thread caches, the first call of a kernel, the loss history);
  the callers state theirs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

BYTES_PER_VALUE = 4  # float32
TRAINED_COPIES = 6  # delta, gradient, AdamW exp_avg and exp_avg_sq, EMA shadow, exported result
SAVED_PER_OUTPUT = 4
MiB = 2**20


@dataclass(frozen=True)
class MemoryBound:
    cloned_base_bytes: int
    trained_bytes: int
    activation_bytes: int
    margin: int

    @property
    def total(self) -> int:
        return self.cloned_base_bytes + self.trained_bytes + self.activation_bytes + self.margin

    def explain(self, measured: int) -> str:
        return (f"measured {measured / MiB:.0f} MiB; bound {self.total / MiB:.0f} MiB = cloned base "
                f"{self.cloned_base_bytes / MiB:.0f} + trained x{TRAINED_COPIES} "
                f"{self.trained_bytes / MiB:.0f} + activations {self.activation_bytes / MiB:.0f} + "
                f"margin {self.margin / MiB:.0f}")


def training_bound(trained_parameters: int, forward_bytes: int, margin: int,
                   cloned_base_parameters: int = 0) -> MemoryBound:
    """The bound on what a training run adds (see the module's docstring)."""
    return MemoryBound(
        cloned_base_bytes=cloned_base_parameters * BYTES_PER_VALUE,
        trained_bytes=trained_parameters * BYTES_PER_VALUE * TRAINED_COPIES,
        activation_bytes=forward_bytes * SAVED_PER_OUTPUT,
        margin=margin,
    )


@torch.no_grad()
def forward_output_bytes(module: torch.nn.Module, *args, **kwargs) -> int:
    """Bytes of every leaf module's tensor outputs in one forward of ``module(*args, **kwargs)``."""
    total = 0

    def count(_mod, _inputs, output) -> None:
        nonlocal total
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        total += sum(o.numel() * o.element_size() for o in outputs if isinstance(o, torch.Tensor))

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        module(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total


def rss_bytes() -> int:
    """The process's resident set now (Linux: /proc/self/statm)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """``with PeakRSS() as peak: ...`` then ``peak.rise``: the highest RSS seen while the block ran
    (sampled every ``interval`` s from a thread, and at both ends) minus the RSS at its start.
    ``ru_maxrss`` cannot serve: it is the peak of the whole process, before the block included."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.start, self.peak = interval, 0, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def rise(self) -> int:
        return self.peak - self.start
