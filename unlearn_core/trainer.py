"""The erasure loop: SDD self-distillation with an EMA teacher (Kim et al. 2023,
https://arxiv.org/abs/2307.05977), the losses of "Towards robust concept erasure in diffusion
models", ESD's objective, several concepts in turn and optional retain prompts.

``erase`` dispatches on the method (UCE's closed form in ``uce.py``, or training here). Training
is ``prepare`` (what every step reads: the model, the prompts, the sampler, the bound loss),
``TrainState`` (what the steps change: the trained tensors, the EMA teacher's shadow, AdamW, the
step counter, the loss history, the evaluation counts) and ``step``, which runs one step:
  1. with the EMA teacher's weights swapped in and no grad, draw ``batch_size`` states z_t from a
     guided DDIM trajectory of the prompt being trained (``sampling.TrajectorySampler``); with
     ``trajectories_per_step`` = G > 1, G such groups, each from its own trajectory, for its own
     concept and pair (group g of step n is trajectory (n // trajectory_reuse) * G + g);
  2. target (no grad): the anchor's prediction (sdd; of the student, of the teacher, of the base
     model, or the teacher's kept from sampling) or the base model's negative guidance (esd);
  3. student prediction for the prompt, with grad; loss D(student, target) (``losses.build_loss``)
     per group, the step's loss the mean over the groups;
  4. optional retain term (student vs. base on a retain prompt) and robust term (``robust.py``);
  5. AdamW step with grad-norm clip; EMA update of the teacher's shadow;
  6. every ``check_every`` steps, the erasure check (``erasure_check.py``): each concept's
     residual on fixed probe states; with ``stop_patience``, training ends once every
     concept's residual has stopped falling.
  7. every ``judge_every`` steps, a judged check (``judge_stop.py``): a few images of each
     concept's prompts, sampled from the returned weights, judged by the caller's judge;
     training ends once every concept is judged erased ``judge_patience`` checks in a row.
The trainer holds no global state: device and randomness come from the model and the config.
Every random draw is keyed by (seed, draw, slot, purpose), so a data-parallel run (``Parallel``:
each process handles whole groups, or a share of every group's slots, ``distributed.py``) gives the
single process's result; ``resume.py`` writes and reads the ``TrainState`` of a run, which
continues to the same result.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .checkpointing import checkpointed
from .conditioning import Conditioning
from .config import EraseConfig
from .delta import Delta, DeltaSet
from .denoiser import Denoiser, module_device, module_dtype
from .distributed import Parallel, Share, key_seed, keyed_generator
from .erasure_check import build_probes, residuals, should_stop
from .errors import Cancelled, ConfigError, TrainingError
from .judge_stop import Judge, check_judge, floors, judged_stop, rates
from .losses import LOSSES, StepLoss, TimestepCoefficients, build_loss, timestep_coefficients
from .objectives import esd_target, sdd_target
from .result import EraseResult, base_metadata, weights_hash
from .resume import CheckpointPlan, load_checkpoint, save_checkpoint
from .sampling import EvalCounter, TrainingStates, TrajectorySampler
from .selection import select_layers

Tensor = torch.Tensor

__all__ = ["StepInfo", "Callback", "TrainState", "erase", "train", "step", "build_loss",
           "check_rank", "make_optimizer", "Parallel"]


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
    # at a step with an erasure check (check_every): each concept's residual, 1 before training,
    # 0 at the erasure's target (erasure_check.py); None at the other steps
    residuals: tuple[float, ...] | None = None
    stopping: bool = False  # training ends here: the erasure check (stop_patience) or the judge
    # at a step with a judged check (judge_every): each concept's share of images judged to show
    # it (judge_stop.py); None at the other steps
    judged: tuple[float, ...] | None = None
    # The erasure as it would be returned if training stopped now (the EMA teacher's deltas, or
    # the student's with result="student"), under canonical names: fresh CPU copies, safe to use
    # in another thread while training goes on. It copies every trained tensor: call it only at
    # the steps that need it.
    weights: Callable[[], dict[str, Delta]] | None = field(default=None, repr=False, compare=False)


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


def make_optimizer(params: list[Tensor], config: EraseConfig) -> torch.optim.Optimizer:
    """AdamW, fused where the device has the kernel: no full-size temporaries (the default
    multi-tensor AdamW allocates several the size of all trained tensors, ~+40% peak memory for a
    full delta), else one tensor at a time for the same reason."""
    kw = dict(lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, foreach=False, **kw)


def erase(denoiser: Denoiser, conditioning: Conditioning, config: EraseConfig,
          callback: Callback | None = None, *, parallel: Parallel | None = None,
          checkpoint: CheckpointPlan | None = None, judge: Judge | None = None) -> EraseResult:
    """Erase ``config.concepts`` from ``denoiser``; returns the weight changes (never writes weights).

    ``conditioning`` holds the embeddings of the concepts (in the order of ``config.concepts``),
    the empty prompt, the trajectory prompt and any retain prompts. ``parallel``: this process's
    share of a data-parallel run; ``checkpoint``: where to write (and resume from) the training
    state; ``judge``: which sampled images show a concept (``judge_stop.Judge``), needed by
    ``judge_every``. UCE (closed form) uses none of them.
    """
    # Shapes, widths and values of the embeddings, before anything is selected or cloned.
    conditioning.check(getattr(denoiser, "context_dim", None))
    if config.method == "uce":
        from .uce import uce_erase

        return uce_erase(denoiser, conditioning, config)
    return train(denoiser, conditioning, config, callback, parallel=parallel,
                 checkpoint=checkpoint, judge=judge)


@dataclass
class Run:
    """What every step of one erasure reads and none changes (the sampler keeps its trajectory)."""

    denoiser: Denoiser
    config: EraseConfig
    cond: Conditioning
    # per concept, the (prompt, anchor) pairs it trains: the bare concept with the empty prompt
    # (SDD), then each context with the same prompt without the concept
    tasks: list[list[tuple[Tensor, Tensor]]]
    held: list[Tensor]  # retain prompts (empty when retain_weight is 0)
    loss: StepLoss
    loss_generator: torch.Generator  # re-seeded every step: the sliced Cramér-Wold directions
    coefficients: TimestepCoefficients
    samplers: list[TrajectorySampler]  # one per group this process handles, each its trajectory
    robust: object | None  # robust.AdversarialTerm
    kept_target: bool  # the SDD target is the teacher's prediction kept from sampling
    layers: dict[str, torch.nn.Module]
    base_hash: str
    parallel: Parallel
    share: Share  # the groups of every step, and the slots of each, this process handles

    @property
    def sampler(self) -> TrajectorySampler:
        """The first group's sampler (the only one with trajectories_per_step = 1)."""
        return self.samplers[0]


@dataclass
class TrainState:
    """What the steps change. ``teacher`` is the EMA shadow of the trained tensors (same order as
    ``deltas.parameters()``), never a second UNet."""

    deltas: DeltaSet
    teacher: list[Tensor]
    optimizer: torch.optim.Optimizer
    evals: EvalCounter  # this process's UNet evaluations
    step: int = 0  # steps done
    history: list[float] = field(default_factory=list)  # the loss of the whole batch, per step
    checks: list[tuple[int, list[float]]] = field(default_factory=list)  # (step, residuals)
    judged: list[tuple[int, list[float]]] = field(default_factory=list)  # (step, judged shares)
    floors: list[float] = field(default_factory=list)  # judge_stop: each concept's floor


def check_inputs(conditioning: Conditioning, config: EraseConfig) -> None:
    if len(conditioning.concepts) != len(config.concepts):
        raise ConfigError("concepts", config.concepts,
                          f"{len(conditioning.concepts)} concept embeddings for "
                          f"{len(config.concepts)} concepts", "encode every concept once")
    if config.retain_weight > 0 and not conditioning.retain:
        raise ConfigError("retain_prompts", config.retain_prompts, "no retain embeddings given",
                          "encode the retain prompts or set retain_weight to 0")


def prepare(denoiser: Denoiser, conditioning: Conditioning, config: EraseConfig,
            parallel: Parallel | None = None) -> tuple[Run, TrainState]:
    """Everything one erasure needs before its first step; nothing is attached to the model yet."""
    check_inputs(conditioning, config)
    parallel = parallel or Parallel()
    share = parallel.share(config.trajectories_per_step, config.batch_size)
    module = denoiser.module
    device, dtype = module_device(module), module_dtype(module)
    layers = select_layers(module, config.selection)
    check_rank(config, layers)
    cond = conditioning.to(device, dtype)
    cond.check(getattr(denoiser, "context_dim", None))
    evals = EvalCounter()
    deltas = DeltaSet(layers, config.parametrization, config.lora_rank, config.lora_alpha,
                      keyed_generator(config.seed, "init"), device)
    state = TrainState(deltas=deltas, teacher=[p.detach().clone() for p in deltas.parameters()],
                       optimizer=make_optimizer(list(deltas.parameters()), config), evals=evals)
    shape = (getattr(denoiser, "in_channels", 4), config.resolution, config.resolution)
    # The teacher's empty-prompt prediction is computed by every guided sampling pass anyway.
    kept = config.objective == "sdd" and config.target_from == "trajectory"
    samplers = [TrajectorySampler(
        denoiser, shape, cond.trajectory if cond.trajectory is not None else cond.concepts[0],
        cond.empty, config.guidance, config.sampling_steps, config.seed, device, dtype,
        config.trajectory_reuse, keep_uncond=kept, evals=evals) for _ in share.groups]
    robust = None
    if config.robust == "adversarial":  # the inner attack and its term live in robust.py
        from .robust import AdversarialTerm

        robust = AdversarialTerm(denoiser, deltas, cond, config, shape, device, dtype, evals)
    tasks = [[(c, cond.empty)] + (list(cond.contexts[i]) if i < len(cond.contexts) else [])
             for i, c in enumerate(cond.concepts)]
    run = Run(denoiser=denoiser, config=config, cond=cond, tasks=tasks,
              held=list(cond.retain) if config.retain_weight > 0 else [],
              loss=build_loss(config, loss_generator := torch.Generator()),
              loss_generator=loss_generator,
              coefficients=timestep_coefficients(denoiser.alphas_cumprod), samplers=samplers,
              robust=robust, kept_target=kept, layers=layers,
              base_hash=weights_hash(module, layers), parallel=parallel, share=share)
    return run, state


@dataclass
class Group:
    """One group of a step's batch: the pair it trains, its trajectory, and (once drawn) its
    states and their target."""

    index: int  # g: its place among the step's trajectories_per_step groups
    draw: int  # n * G + g: keys its states' depths and timesteps and its loss's directions
    trajectory: int  # (n // trajectory_reuse) * G + g: keys its z_T
    prompt: Tensor
    anchor: Tensor
    concept: int
    states: TrainingStates | None = None
    target: Tensor | None = None


def choose_pair(run: Run, n: int, g: int = 0) -> Group:
    """What group ``g`` of step ``n`` trains, from which trajectory: a function of (n, g) alone.
    The concepts are taken in turn over the trajectories, so with several concepts the groups of
    one step train different ones."""
    cfg = run.config
    per_step = cfg.trajectories_per_step
    draw, trajectory = n * per_step + g, (n // cfg.trajectory_reuse) * per_step + g
    if cfg.trajectory_from == "joint":
        # SDD: one joint trajectory prompt; the concepts are taken in turn, group by group
        i = draw % len(run.cond.concepts)
        return Group(g, draw, trajectory, run.cond.concepts[i], run.cond.empty, i)
    # each trajectory from the prompt it trains, the concepts in turn; the pair (the bare concept
    # or one of its contexts) drawn at random, once per trajectory
    i = trajectory % len(run.tasks)
    pairs = run.tasks[i]
    j = int(torch.randint(len(pairs), (), generator=keyed_generator(cfg.seed, "pair", trajectory)))
    return Group(g, draw, trajectory, pairs[j][0], pairs[j][1], i)


def aim_samplers(run: Run, n: int) -> list[Group]:
    """This process's groups of step ``n``, each sampler set to its group's prompt (a sampler
    keeps its trajectory while the prompt stays)."""
    groups = [choose_pair(run, n, g) for g in run.share.groups]
    if run.config.trajectory_from != "joint":
        for group, sampler in zip(groups, run.samplers, strict=True):
            sampler.set_prompt(group.prompt)
    return groups


def draw_groups(run: Run, state: TrainState) -> list[Group]:
    """This process's groups of the step: their states (this process's slots of each), sampled
    by the EMA teacher, and their targets; no gradient."""
    cfg = run.config
    groups = aim_samplers(run, state.step)
    with torch.no_grad(), state.deltas.swapped(state.teacher):  # the EMA teacher samples
        for group, sampler in zip(groups, run.samplers, strict=True):
            group.states = sampler.draw(cfg.batch_size, group.draw, run.share.slots,
                                        group.trajectory)
    for group in groups:
        group.target = target(run, state, group.states, group.prompt, group.anchor)
    return groups


def _rows(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def group_losses(run: Run, groups: list[Group], eps_student: Tensor) -> Tensor:
    """The step's loss, the mean of its groups' losses, as far as this process holds it: the sum
    of its own groups' losses / G (whole groups; the sum over the processes is the mean), or the
    whole mean (split by slots: each group's rows gathered from every process, so a distance
    between sets such as Cramér-Wold sees the group whole)."""
    cfg = run.config
    gather = run.parallel.gather if run.share.by_slots else (lambda x: x)
    parts = [eps_student] if len(groups) == 1 else eps_student.split(
        [g.states.x.shape[0] for g in groups])
    losses = []
    for group, eps in zip(groups, parts, strict=True):
        run.loss_generator.manual_seed(key_seed(cfg.seed, "loss", group.draw))
        losses.append(run.loss(gather(eps), gather(group.target), gather(group.states.t),
                               run.coefficients))
    if cfg.trajectories_per_step == 1:
        return losses[0]
    return torch.stack(losses).sum() / cfg.trajectories_per_step


@torch.no_grad()
def target(run: Run, state: TrainState, states: TrainingStates, prompt: Tensor,
           anchor: Tensor) -> Tensor:
    """What the student's prediction is pulled to at ``states`` (no gradient)."""
    cfg, batch = run.config, states.x.shape[0]
    if run.kept_target and anchor is run.cond.empty:
        return states.uncond  # made by the sampling pass: no UNet evaluation
    if cfg.objective == "sdd":
        state.evals.nograd += batch
        return sdd_target(run.denoiser, state.deltas, state.teacher, states.x, states.t,
                          anchor.expand(batch, -1, -1),
                          "student" if run.kept_target else cfg.target_from)
    state.evals.nograd += 2 * batch
    return esd_target(run.denoiser, state.deltas, states.x, states.t,
                      prompt.expand(batch, -1, -1), anchor.expand(batch, -1, -1), cfg.esd_eta)


def retain_term(run: Run, state: TrainState, x_t: Tensor, t: Tensor) -> Tensor | float:
    """retain_weight x L2(student, base) on this step's retain prompt; 0 when there is none."""
    if not run.held:
        return 0.0
    batch = x_t.shape[0]
    emb = run.held[state.step % len(run.held)].expand(batch, -1, -1)
    with torch.no_grad(), state.deltas.disabled():
        eps_base = run.denoiser(x_t, t, emb).float()
    eps_retain = run.denoiser(x_t, t, emb).float()
    state.evals.nograd += batch
    state.evals.grad += batch
    return run.config.retain_weight * LOSSES["l2"](eps_retain, eps_base)


def step(run: Run, state: TrainState) -> float:
    """One training step (see the module docstring) on this process's groups (or slots) of the
    batch; returns the whole batch's loss (without the retain and robust terms)."""
    cfg, deltas, par = run.config, state.deltas, run.parallel
    groups = draw_groups(run, state)
    x_t = _rows([g.states.x for g in groups])  # this process's states: (b, C, H, W)
    t = _rows([g.states.t for g in groups])  # (b,)
    prompts = _rows([g.prompt.expand(g.states.x.shape[0], -1, -1) for g in groups])
    # The student's weights enter here, unseen: DeltaSet's forward hooks (attached by `train`)
    # add each trained delta to its layer's output, so this plain UNet call is the student's.
    eps_student = run.denoiser(x_t, t, prompts)
    state.evals.grad += x_t.shape[0]
    loss = group_losses(run, groups, eps_student)
    extra = retain_term(run, state, x_t, t)  # the mean over this process's states
    if run.robust is not None:  # computed whole by every process
        extra = extra + run.robust.term(state.step, choose_pair(run, state.step).concept)
    # summed over the processes below, each process's share of the mean terms is 1/world
    total = loss + (extra / par.world_size if par.active else extra)
    # .item() waits for the device: the loss must be known finite (on every process: the sum)
    # before AdamW writes it into the weights, and the history keeps plain floats; one sync per
    # step, next to a full forward and backward pass, costs little.
    sums = par.sum(torch.stack([loss.detach().double(), total.detach().double()]))
    if not math.isfinite(float(sums[1])):
        raise TrainingError(f"the loss became {float(sums[1])} at step {state.step + 1} of "
                            f"{cfg.steps}; nothing was written. Fix: lower lr, or use the l2 loss.")
    state.optimizer.zero_grad(set_to_none=True)
    total.backward()
    par.reduce_gradients(list(deltas.parameters()))  # the same gradient on every process
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(deltas.parameters(), cfg.grad_clip)
    state.optimizer.step()
    with torch.no_grad():
        for shadow, p in zip(state.teacher, deltas.parameters()):
            shadow.lerp_(p.detach(), 1.0 - cfg.ema_decay)
    state.step += 1
    # the same on every process: split by slots, each holds the whole loss; else the sum
    state.history.append(float(loss.item()) if run.share.by_slots else float(sums[0]))
    return state.history[-1]


@contextlib.contextmanager
def training(run: Run, state: TrainState) -> Iterator[None]:
    """The base weights frozen, the deltas hooked in (and checkpointing on, if asked) inside;
    everything as it was after, and AdamW's moments and the gradients freed."""
    module = run.denoiser.module
    frozen = [(p, p.requires_grad) for p in module.parameters()]
    stack = contextlib.ExitStack()
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        state.deltas.attach()
        stack.enter_context(checkpointed(module, run.config.gradient_checkpointing))
        yield
    finally:
        stack.close()
        state.deltas.detach_hooks()
        for p, flag in frozen:
            p.requires_grad_(flag)
        # Gradients and AdamW's moments (3 copies of the trained tensors) go before the export
        # makes its own copy, so the export does not raise the peak.
        state.optimizer.zero_grad(set_to_none=True)
        state.optimizer.state.clear()


def train(denoiser: Denoiser, conditioning: Conditioning, config: EraseConfig,
          callback: Callback | None = None, *, parallel: Parallel | None = None,
          checkpoint: CheckpointPlan | None = None, judge: Judge | None = None) -> EraseResult:
    """The training methods (sdd, esd): ``config.steps`` steps, the callback after each; with
    ``checkpoint``, the state is read back first (``resume``) and written every ``every`` steps;
    with ``judge_every``, fewer once ``judge`` sees every concept gone."""
    check_judge(config, judge)
    run, state = prepare(denoiser, conditioning, config, parallel)
    if checkpoint is not None and checkpoint.resume:
        load_checkpoint(checkpoint.path, run, state)
    start = time.perf_counter()
    with training(run, state):
        probes = build_probes(run, state) if config.check_every else None
        if config.judge_every and not state.floors:
            state.floors = floors(run, state, judge)
        stopping = should_stop(config, state.checks) or judged_stop(config, state.floors,
                                                                    state.judged)
        while state.step < config.steps and not stopping:
            loss = step(run, state)
            found = shares = None
            if probes is not None and (state.step % config.check_every == 0
                                       or state.step == config.steps):
                found = residuals(run, state, probes)
                state.checks.append((state.step, found))
            if config.judge_every and state.step % config.judge_every == 0:
                shares = rates(run, state, judge, len(state.judged))
                state.judged.append((state.step, shares))
            stopping = should_stop(config, state.checks) or judged_stop(config, state.floors,
                                                                        state.judged)
            if checkpoint is not None and (stopping or checkpoint.due(state.step, config.steps)):
                save_checkpoint(checkpoint.path, run, state)
            if callback is not None and callback(StepInfo(
                    state.step, config.steps, loss, config.lr, time.perf_counter() - start,
                    state.evals.total, state.evals.adversarial,
                    weights=lambda: current_deltas(run, state),
                    residuals=None if found is None else tuple(found), stopping=stopping,
                    judged=None if shares is None else tuple(shares))):
                raise Cancelled(f"cancelled at step {state.step} of {config.steps}; "
                                "nothing was written")
    return export(run, state, time.perf_counter() - start)


def current_deltas(run: Run, state: TrainState) -> dict[str, Delta]:
    """The teacher's (or, with result="student", the student's) deltas under canonical names,
    copied to the CPU."""
    deltas = state.deltas
    with deltas.returned(state.teacher, run.config.result):
        exported = deltas.export()
    return {run.denoiser.canonical_name(n): d for n, d in exported.items()}


def export(run: Run, state: TrainState, seconds: float) -> EraseResult:
    """The result: the teacher's (or the student's) deltas under canonical names, and metadata."""
    config, deltas = run.config, state.deltas
    canonical = current_deltas(run, state)
    # every process's evaluations, summed, and (data-parallel) each one's
    counts = {"nograd": state.evals.nograd, "grad": state.evals.grad,
              "sampling": state.evals.sampling}
    nograd, grad, sampling = run.parallel.sum(torch.tensor(
        list(counts.values()), dtype=torch.float64)).long().tolist()
    meta = base_metadata(config, run.base_hash, {
        "seconds": round(seconds, 3),
        "unet_evals_nograd": nograd,
        "unet_evals_grad": grad,
        "unet_evals_sampling": sampling,  # of nograd: the trajectories
        **({"world_size": run.parallel.world_size,
            "unet_evals_per_process": run.parallel.gather_objects(counts)}
           if run.parallel.active else {}),
        "layers": len(canonical),
        "context_prompts": sum(len(pairs) - 1 for pairs in run.tasks),
        "trained_parameters": sum(p.numel() for p in deltas.parameters()),
        **(run.robust.metadata() if run.robust is not None else {}),
        **({"erasure_check": {
            "check_every": config.check_every, "stop_patience": config.stop_patience,
            "steps_run": state.step,
            "stopped_early": state.step < config.steps,
            "checks": [[n, [round(r, 5) for r in found]] for n, found in state.checks]}}
           if config.check_every else {}),
        **({"judge_stop": {
            "judge_every": config.judge_every, "judge_images": config.judge_images,
            "judge_patience": config.judge_patience, "steps": config.steps,
            "steps_run": state.step, "stopped_early": state.step < config.steps,
            "floors": [round(f, 5) for f in state.floors],
            "checks": [[n, [round(r, 5) for r in found]] for n, found in state.judged]}}
           if config.judge_every else {}),
    })
    return EraseResult(deltas=canonical, config=config, loss_history=state.history, metadata=meta)
