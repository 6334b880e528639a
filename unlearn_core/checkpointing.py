"""Gradient checkpointing for the student's pass, on any SD-1 UNet (diffusers' or ComfyUI's).

The activations kept for the backward pass dominate training memory at 512 px. With checkpointing
on, each transformer block and residual block keeps only its inputs; its inside is recomputed in
the backward pass (about one more forward per step, Chen et al. 2016,
https://arxiv.org/abs/1604.06174). The blocks are found by class name, which diffusers and
ComfyUI share for the transformer block; the residual block is ``ResnetBlock2D`` in diffusers and
``ResBlock`` in ComfyUI. The model's own forward methods are put back on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.utils.checkpoint
from torch import nn

BLOCK_CLASSES = frozenset({"BasicTransformerBlock", "ResnetBlock2D", "ResBlock"})


def checkpoint_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of ``module`` that checkpointing wraps (outermost only, in model order)."""
    found: list[nn.Module] = []
    inside: set[int] = set()
    for m in module.modules():
        if id(m) in inside:
            continue
        if type(m).__name__ in BLOCK_CLASSES:
            found.append(m)
            inside.update(id(c) for c in m.modules())
    return found


@contextlib.contextmanager
def checkpointed(module: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Inside this block, every checkpointable block of ``module`` recomputes its activations in
    the backward pass (only while grad is enabled; no-grad passes run as before). Yields the
    number of blocks wrapped."""
    if not enabled:
        yield 0
        return
    blocks = checkpoint_blocks(module)
    saved: list[tuple[nn.Module, object | None]] = []

    def wrap(block: nn.Module):
        inner = block.forward

        def forward(*args, **kwargs):
            if not torch.is_grad_enabled():
                return inner(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(inner, *args, use_reentrant=False, **kwargs)

        return forward

    try:
        for block in blocks:
            saved.append((block, block.__dict__.get("forward")))
            block.forward = wrap(block)
        yield len(blocks)
    finally:
        for block, own in saved:
            if own is None:
                del block.forward
            else:
                block.forward = own
