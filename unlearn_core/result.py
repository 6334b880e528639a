"""What an erasure returns: the weight changes, the loss history, the config and metadata."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import __version__
from .config import EraseConfig
from .delta import Delta, applied
from .denoiser import Denoiser

Tensor = torch.Tensor


@dataclass
class EraseResult:
    """``deltas`` are keyed by canonical (diffusers) layer names, tensors on the CPU in float32."""

    deltas: dict[str, Delta]
    config: EraseConfig
    loss_history: list[float] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def applied(self, denoiser: Denoiser, strength: float = 1.0) -> Iterator[None]:
        """Run ``denoiser`` with this erasure added (base weights untouched)."""
        native = {denoiser.native_name(n): d for n, d in self.deltas.items()}
        with applied(denoiser.module, native, strength):
            yield


def weights_hash(module: nn.Module, names: Iterable[str] | None = None) -> str:
    """sha256 over the named layers' weights (all parameters when ``names`` is None), in order."""
    h = hashlib.sha256()
    modules = dict(module.named_modules())
    if names is None:
        tensors = [p for _, p in sorted(module.state_dict().items())]
    else:
        tensors = [modules[n].weight for n in names]
    for t in tensors:
        data = t.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        h.update(data.numpy().tobytes())
    return h.hexdigest()


def base_metadata(config: EraseConfig, base_hash: str, extra: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    meta = {
        "unlearn_version": __version__,
        "torch_version": torch.__version__,
        "base_weights_sha256": base_hash,
        "config": config.to_dict(),
    }
    meta.update(extra or {})
    return meta
