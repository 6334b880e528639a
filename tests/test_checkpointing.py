"""Gradient checkpointing: the same training run, fewer activations kept, the model put back."""

import torch
from unlearn_testkit.tiny import tiny_conditioning, tiny_denoiser

from unlearn_core import EraseConfig, erase
from unlearn_core.checkpointing import checkpoint_blocks, checkpointed


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``fn`` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.float().pow(2).mean().backward()
    return total[0]


def test_checkpointing_keeps_fewer_activations_and_the_same_gradients():
    d = tiny_denoiser()
    names = {type(b).__name__ for b in checkpoint_blocks(d.module)}
    assert names == {"BasicTransformerBlock", "ResnetBlock2D"}
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    t, c = torch.tensor([10, 700]), torch.randn(2, 6, 32)
    plain = saved_bytes(lambda: d(x, t, c))
    grad_plain = x.grad.clone()
    x.grad = None
    with checkpointed(d.module) as n:
        assert n == len(checkpoint_blocks(d.module))
        ckpt = saved_bytes(lambda: d(x, t, c))
    assert ckpt < 0.6 * plain, (ckpt, plain)
    assert torch.allclose(x.grad, grad_plain, atol=1e-6)
    assert not any("forward" in m.__dict__ for m in d.module.modules())  # forwards put back


def test_erasure_with_checkpointing_matches_without():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=3, resolution=8, sampling_steps=4, batch_size=2,
                      lr=1e-3, parametrization="full")
    a = erase(tiny_denoiser(), cond, cfg)
    d = tiny_denoiser()
    b = erase(d, cond, cfg.replace(gradient_checkpointing=True))
    assert torch.allclose(torch.tensor(a.loss_history), torch.tensor(b.loss_history), rtol=1e-5)
    for name in a.deltas:
        assert torch.allclose(a.deltas[name].weight(), b.deltas[name].weight(), atol=1e-6)
    assert not any("forward" in m.__dict__ for m in d.module.modules())
