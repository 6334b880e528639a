"""The erasure loop: SDD self-distillation with an EMA teacher (Kim et al. 2023,
https://arxiv.org/abs/2307.05977), the losses of "Towards robust concept erasure in diffusion
models", ESD's objective, several concepts in turn and optional retain prompts.

One step, top to bottom:
  1. with the EMA teacher's weights swapped in and no grad, draw ``batch_size`` states z_t from a
     guided DDIM trajectory of the concepts' prompt (``sampling.TrajectorySampler``);
  2. target (no grad): the empty-prompt prediction (sdd; of the student, of the teacher, or the
     teacher's kept from sampling) or the base model's negative guidance (esd);
  3. student prediction for the current concept, with grad; loss D(student, target);
  4. optional retain term: student vs. base prediction on a retain prompt (L2), times retain_weight;
  5. AdamW step with grad-norm clip; EMA update of the teacher's shadow; callback.
The trainer holds no global state: device and randomness come from the model and the config.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .checkpointing import checkpointed
from .conditioning import Conditioning
from .config import EraseConfig
from .delta import DeltaSet
from .denoiser import Denoiser, module_device, module_dtype
from .errors import Cancelled, ConfigError, TrainingError
from .losses import LOSSES
from .objectives import esd_target, sdd_target
from .result import EraseResult, base_metadata, weights_hash
from .sampling import TrajectorySampler
from .selection import select_layers

Tensor = torch.Tensor


@dataclass(frozen=True)
class StepInfo:
    """What the callback sees after each step. Return True from the callback to cancel."""

    step: int  # 1-based
    total: int
    loss: float
    lr: float
    elapsed: float  # seconds since the start
    unet_evals: int  # UNet evaluations so far, counted per latent (a CFG pass counts 2)
    adversarial_evals: int = 0  # of unet_evals: spent by robust="adversarial" (robust.py)


Callback = Callable[[StepInfo], "bool | None"]


def check_rank(config: EraseConfig, layers: dict[str, torch.nn.Module]) -> None:
    """LoRA rank must not exceed any selected layer's min(out, in*k*k)."""
    if config.parametrization != "lora":
        return
    limit = min(min(l.weight.shape[0], l.weight[0].numel()) for l in layers.values())
    if config.lora_rank > limit:
        raise ConfigError("lora_rank", config.lora_rank,
                          f"larger than the smallest selected layer allows ({limit})",
                          f"set lora_rank to {limit} or less")


def build_loss(config: EraseConfig, generator: torch.Generator) -> Callable[..., Tensor]:
    fn = LOSSES[config.loss]
    if config.loss == "jensen_shannon":
        return functools.partial(fn, temperature=config.js_temperature, axis=config.js_axis)
    if config.loss == "cramer_wold":
        return functools.partial(fn, mode=config.cw_mode, bandwidth=config.cw_bandwidth,
                                 directions=config.cw_directions, generator=generator)
    return fn


def make_optimizer(params: list[Tensor], config: EraseConfig) -> torch.optim.Optimizer:
    """AdamW, fused where the device has the kernel: no full-size temporaries (the default
    multi-tensor AdamW allocates several the size of all trained tensors, ~+40% peak memory for a
    full delta), else one tensor at a time for the same reason."""
    kw = dict(lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, foreach=False, **kw)


def _step_coefficients(alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """Per-timestep SNR weight (x0-space, mean 1 over t) and the Gaussian-JS scale."""
    ab = alphas_cumprod.double()
    snr_w = (1.0 / ab - 1.0).sqrt()
    snr_w = snr_w / snr_w.mean()
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    beta = 1.0 - ab / ab_prev
    alpha = 1.0 - beta
    # |mu_s - mu_t| / sigma_t with sigma_t^2 = beta_t (DDPM's "large" variance, defined at t = 0)
    js_scale = beta.sqrt() / (alpha.sqrt() * (1.0 - ab).sqrt())
    return snr_w.float(), js_scale.float()


def erase(denoiser: Denoiser, conditioning: Conditioning, config: EraseConfig,
          callback: Callback | None = None) -> EraseResult:
    """Erase ``config.concepts`` from ``denoiser``; returns the weight changes (never writes weights).

    ``conditioning`` holds the embeddings of the concepts (in the order of ``config.concepts``),
    the empty prompt, the trajectory prompt and any retain prompts.
    """
    # Shapes, widths and values of the embeddings, before anything is selected or cloned.
    conditioning.check(getattr(denoiser, "context_dim", None))
    if config.method == "uce":
        from .uce import uce_erase

        return uce_erase(denoiser, conditioning, config)
    if len(conditioning.concepts) != len(config.concepts):
        raise ConfigError("concepts", config.concepts,
                          f"{len(conditioning.concepts)} concept embeddings for "
                          f"{len(config.concepts)} concepts", "encode every concept once")
    if config.retain_weight > 0 and not conditioning.retain:
        raise ConfigError("retain_prompts", config.retain_prompts, "no retain embeddings given",
                          "encode the retain prompts or set retain_weight to 0")
    module = denoiser.module
    device, dtype = module_device(module), module_dtype(module)
    layers = select_layers(module, config.selection)
    check_rank(config, layers)
    cond = conditioning.to(device, dtype)
    cond.check(getattr(denoiser, "context_dim", None))
    trajectory_emb = cond.trajectory if cond.trajectory is not None else cond.concepts[0]

    generator = torch.Generator().manual_seed(config.seed)
    loss_generator = torch.Generator().manual_seed(config.seed + 1)
    loss_fn = build_loss(config, loss_generator)
    snr_w, js_scale = _step_coefficients(denoiser.alphas_cumprod)
    base_hash = weights_hash(module, layers)

    deltas = DeltaSet(layers, config.parametrization, config.lora_rank, config.lora_alpha,
                      generator, device)
    # The EMA teacher: a shadow of the trained tensors only (not a second UNet).
    teacher = [p.detach().clone() for p in deltas.parameters()]
    optimizer = make_optimizer(list(deltas.parameters()), config)
    channels = getattr(denoiser, "in_channels", 4)
    robust = None
    if config.robust == "adversarial":  # the inner attack and its term live in robust.py
        from .robust import AdversarialTerm

        robust = AdversarialTerm(denoiser, deltas, cond, config,
                                 (channels, config.resolution, config.resolution), device, dtype)
    # The teacher's empty-prompt prediction is computed by every guided sampling pass anyway.
    cached_target = config.objective == "sdd" and config.target_from == "trajectory"
    sampler = TrajectorySampler(
        denoiser, (channels, config.resolution, config.resolution), trajectory_emb, cond.empty,
        config.guidance, config.sampling_steps, generator, device, dtype, config.trajectory_reuse,
        keep_uncond=cached_target,
    )
    frozen = [(p, p.requires_grad) for p in module.parameters()]
    # What each trajectory trains: a (prompt, anchor) pair of one concept. The bare concept's
    # anchor is the empty prompt (SDD); a context's is the same prompt without the concept.
    tasks = [[(c, cond.empty)] + (list(cond.contexts[i]) if i < len(cond.contexts) else [])
             for i, c in enumerate(cond.concepts)]
    held = list(cond.retain) if config.retain_weight > 0 else []
    task_generator = torch.Generator().manual_seed(config.seed + 2)
    history: list[float] = []
    grad_evals = 0
    start = time.perf_counter()
    batch = config.batch_size
    reuse = config.trajectory_reuse
    prompt, anchor, i = cond.concepts[0], cond.empty, 0
    stack = contextlib.ExitStack()
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        deltas.attach()
        stack.enter_context(checkpointed(module, config.gradient_checkpointing))
        for step in range(config.steps):
            if config.trajectory_from == "joint":
                # SDD: one joint trajectory prompt; the concepts are taken in turn, step by step
                i = step % len(cond.concepts)
                prompt, anchor = cond.concepts[i], cond.empty
            elif step % reuse == 0:
                # each trajectory from the prompt it trains, the concepts in turn; the pair
                # (the bare concept or one of its contexts) drawn at random
                i = (step // reuse) % len(tasks)
                pairs = tasks[i]
                j = int(torch.randint(len(pairs), (), generator=task_generator))
                prompt, anchor = pairs[j]
                sampler.set_prompt(prompt)
            emb_concept = prompt.expand(batch, -1, -1)
            emb_empty = anchor.expand(batch, -1, -1)
            with torch.no_grad(), deltas.swapped(teacher):
                states = sampler.draw(batch)
            x_t, t = states.x, states.t  # (B, C, H, W), (B,)
            if cached_target and anchor is cond.empty:
                target, target_evals = states.uncond, 0
            elif config.objective == "sdd":
                target = sdd_target(denoiser, deltas, teacher, x_t, t, emb_empty,
                                    "student" if cached_target else config.target_from)
                target_evals = batch
            else:
                target = esd_target(denoiser, deltas, x_t, t, emb_concept, emb_empty,
                                    config.esd_eta)
                target_evals = 2 * batch
            eps_student = denoiser(x_t, t, emb_concept).float()
            target = target.float()
            if config.timestep_weighting == "snr":
                w = snr_w.to(device)[t].view(-1, 1, 1, 1)
                eps_student, target = eps_student * w, target * w
            if config.loss == "jensen_shannon_gaussian":
                loss = loss_fn(eps_student, target, scale=js_scale.to(device)[t])
            else:
                loss = loss_fn(eps_student, target)
            total = loss
            retain_evals = 0
            if held:
                emb_retain = held[step % len(held)].expand(batch, -1, -1)
                with torch.no_grad(), deltas.disabled():
                    eps_base = denoiser(x_t, t, emb_retain).float()
                eps_retain = denoiser(x_t, t, emb_retain).float()
                total = loss + config.retain_weight * LOSSES["l2"](eps_retain, eps_base)
                retain_evals = 2 * batch
            if robust is not None:
                adv_loss, adv_grad, adv_nograd = robust.term(step, i)
                total = total + adv_loss
                grad_evals += adv_grad
                sampler.unet_evals += adv_nograd
            if not math.isfinite(total.item()):
                raise TrainingError(
                    f"the loss became {total.item()} at step {step + 1} of {config.steps}; "
                    "nothing was written. Fix: lower lr, or use the l2 loss."
                )
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(deltas.parameters(), config.grad_clip)
            optimizer.step()
            with torch.no_grad():
                for shadow, p in zip(teacher, deltas.parameters()):
                    shadow.lerp_(p.detach(), 1.0 - config.ema_decay)
            history.append(float(loss.item()))
            grad_evals += batch + retain_evals // 2
            sampler.unet_evals += target_evals + retain_evals // 2
            if callback is not None:
                info = StepInfo(step + 1, config.steps, history[-1], config.lr,
                                time.perf_counter() - start, sampler.unet_evals + grad_evals,
                                robust.unet_evals if robust is not None else 0)
                if callback(info):
                    raise Cancelled(f"cancelled at step {step + 1} of {config.steps}; "
                                    "nothing was written")
    finally:
        stack.close()
        deltas.detach_hooks()
        for p, flag in frozen:
            p.requires_grad_(flag)
        # Gradients and AdamW's moments (3 copies of the trained tensors) go before the export
        # makes its own copy, so the export does not raise the peak.
        optimizer.zero_grad(set_to_none=True)
        optimizer.state.clear()
    if config.result == "teacher":
        with deltas.swapped(teacher):
            exported = deltas.export()
    else:
        exported = deltas.export()
    canonical = {denoiser.canonical_name(n): d for n, d in exported.items()}
    meta = base_metadata(config, base_hash, {
        "seconds": round(time.perf_counter() - start, 3),
        "unet_evals_nograd": sampler.unet_evals,
        "unet_evals_grad": grad_evals,
        "layers": len(canonical),
        "context_prompts": sum(len(pairs) - 1 for pairs in tasks),
        "trained_parameters": sum(p.numel() for p in deltas.parameters()),
        **(robust.metadata() if robust is not None else {}),
    })
    return EraseResult(deltas=canonical, config=config, loss_history=history, metadata=meta)
