"""Trainable weight deltas on top of frozen layers, as a full delta or a LoRA.

The base weights are never written: each selected Linear/Conv2d gets a forward hook that adds
``delta(x)`` to its output, so W_eff = W + dW with dW = full, or dW = (alpha/rank) * up @ down
(LoRA, Hu et al. 2021, https://arxiv.org/abs/2106.09685; up initialised to zero so training starts
exactly at the base model). The EMA teacher is a shadow copy of these tensors only (SDD keeps a
second UNet); ``swapped`` puts the shadow in place for sampling without copying.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, ModelError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Delta:
    """One layer's change: a full ``diff`` or a LoRA (``down``, ``up``, ``alpha``). CPU tensors."""

    diff: Tensor | None = None
    down: Tensor | None = None  # (rank, in[, kh, kw])
    up: Tensor | None = None  # (out, rank[, 1, 1])
    alpha: float | None = None

    @property
    def is_lora(self) -> bool:
        return self.down is not None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0]) if self.down is not None else 0

    def weight(self) -> Tensor:
        """The dense weight change dW, shaped like the layer's weight."""
        if self.diff is not None:
            return self.diff
        up = self.up.flatten(1).float()
        down = self.down.flatten(1).float()
        scale = (self.alpha if self.alpha is not None else self.rank) / self.rank
        full = scale * (up @ down)
        return full.reshape(self.up.shape[0], *self.down.shape[1:]).to(self.up.dtype)


class LayerDelta(nn.Module):
    """Trainable delta for one Linear or Conv2d layer."""

    def __init__(
        self,
        layer: nn.Module,
        kind: str,
        rank: int = 8,
        alpha: float = 8.0,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.is_conv = isinstance(layer, nn.Conv2d)
        weight_shape = tuple(layer.weight.shape)
        if self.is_conv:
            self.conv_args = dict(
                stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                groups=layer.groups,
            )
            if layer.groups != 1:
                raise ValueError("grouped convolutions are not supported")
            if isinstance(layer.padding, str):
                raise ValueError("string padding is not supported")
        if kind == "full":
            self.diff = nn.Parameter(torch.zeros(weight_shape, device=device))
        elif kind == "lora":
            out_f, in_f = weight_shape[0], weight_shape[1]
            limit = min(out_f, in_f * (math.prod(weight_shape[2:]) if self.is_conv else 1))
            if rank > limit:
                raise ValueError(f"rank {rank} exceeds this layer's limit {limit}")
            kernel = weight_shape[2:]
            down = torch.empty((rank, in_f, *kernel))
            # Kaiming-uniform (as torch's Linear) on the down projection, drawn from our generator
            # so the run is reproducible; up is zero, so the model starts exactly at the base.
            bound = 1.0 / math.sqrt(in_f * (math.prod(kernel) if kernel else 1))
            down.uniform_(-bound, bound, generator=generator)
            self.down = nn.Parameter(down.to(device))
            self.up = nn.Parameter(torch.zeros((out_f, rank, *([1] * len(kernel))), device=device))
            self.scale = alpha / rank
            self.alpha = float(alpha)
        else:
            raise ValueError(f"kind must be 'full' or 'lora', got {kind!r}")

    def forward(self, x: Tensor) -> Tensor:
        """The delta's contribution to the layer output for input x."""
        if self.kind == "full":
            w = self.diff
            if self.is_conv:
                return F.conv2d(x.to(w.dtype), w, None, **self.conv_args)
            return F.linear(x.to(w.dtype), w)
        if self.is_conv:
            h = F.conv2d(x.to(self.down.dtype), self.down, None, **self.conv_args)
            return F.conv2d(h, self.up) * self.scale
        return F.linear(F.linear(x.to(self.down.dtype), self.down), self.up) * self.scale

    def export(self) -> Delta:
        if self.kind == "full":
            return Delta(diff=self.diff.detach().float().cpu().clone())
        return Delta(
            down=self.down.detach().float().cpu().clone(),
            up=self.up.detach().float().cpu().clone(),
            alpha=self.alpha,
        )


class DeltaSet(nn.Module):
    """The deltas of all selected layers, attached to the model through forward hooks."""

    def __init__(self, layers: Mapping[str, nn.Module], kind: str, rank: int = 8,
                 alpha: float = 8.0, generator: torch.Generator | None = None,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.names = list(layers)
        self.layers = dict(layers)
        self.deltas = nn.ModuleList(
            LayerDelta(layers[n], kind, rank, alpha, generator, device) for n in self.names
        )
        self.enabled = True
        self._handles: list = []

    def items(self) -> Iterator[tuple[str, LayerDelta]]:
        return zip(self.names, self.deltas)

    def attach(self) -> None:
        if self._handles:
            return
        for name, delta in self.items():
            self._handles.append(self.layers[name].register_forward_hook(self._hook(delta)))

    def detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, delta: LayerDelta):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            if not self.enabled:
                return output
            return output + delta(args[0]).to(output.dtype)

        return hook

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the untouched base model inside this block."""
        prev, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = prev

    def returned(self, teacher: list[Tensor], result: str) -> contextlib.AbstractContextManager:
        """The weights the erasure returns, in place inside this block: the EMA ``teacher``
        swapped in (``result="teacher"``), or the student's as they are (``"student"``)."""
        return self.swapped(teacher) if result == "teacher" else contextlib.nullcontext()

    @contextlib.contextmanager
    def swapped(self, shadow: list[Tensor]) -> Iterator[None]:
        """Put ``shadow`` (same order as ``parameters()``) in place of the trained values."""
        params = list(self.parameters())
        self._swap(params, shadow)
        try:
            yield
        finally:
            self._swap(params, shadow)

    @staticmethod
    def _swap(params: list[Tensor], shadow: list[Tensor]) -> None:
        # Exchange storages, not values: no copy, and swapping twice restores both sides.
        with torch.no_grad():
            for p, s in zip(params, shadow):
                p.data, s.data = s.data, p.data

    def export(self) -> dict[str, Delta]:
        return {name: d.export() for name, d in self.items()}


def check_strength(strength: object, field: str = "strength") -> float:
    """``strength`` as a float; ConfigError naming ``field`` unless it is a finite number.

    NaN passes every range check (every comparison with it is false) and would turn the model's
    output into NaN without an error, so it is refused here, where an erasure meets a model.
    """
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ConfigError(field, strength, "must be a number",
                          "give a number: 1 = as trained, 0 = no change, -1 = the other way")
    if not math.isfinite(strength):
        raise ConfigError(field, strength, "must be a finite number",
                          "give a number: 1 = as trained, 0 = no change, -1 = the other way")
    return float(strength)


@contextlib.contextmanager
def applied(module: nn.Module, deltas: Mapping[str, Delta], strength: float = 1.0) -> Iterator[None]:
    """Run ``module`` with ``deltas`` (keyed by its own module names) added, without writing weights.

    Raises ConfigError for a strength that is not a finite number, ModelError naming the layers
    the module lacks.
    """
    strength = check_strength(strength)
    modules = dict(module.named_modules())
    missing = [n for n in deltas if n not in modules]
    if missing:
        raise ModelError(f"{len(missing)} layers of the erasure are not in the model, e.g. "
                         f"{missing[:3]}. Fix: apply it to the model it was made for.")
    handles = []

    def make(layer: nn.Module, d: Delta):
        w = d.weight()
        conv = isinstance(layer, nn.Conv2d)

        def hook(mod: nn.Module, args: tuple, output: Tensor) -> Tensor:
            x = args[0]
            wd = w.to(device=x.device, dtype=torch.float32) * strength
            if conv:
                extra = F.conv2d(x.float(), wd, None, mod.stride, mod.padding, mod.dilation,
                                 mod.groups)
            else:
                extra = F.linear(x.float(), wd)
            return output + extra.to(output.dtype)

        return hook

    try:
        for name, d in deltas.items():
            handles.append(modules[name].register_forward_hook(make(modules[name], d)))
        yield
    finally:
        for h in handles:
            h.remove()
