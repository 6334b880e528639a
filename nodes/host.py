"""Everything that touches ComfyUI: the only module of the pack that imports ``comfy`` or
``folder_paths`` (tests/test_architecture.py keeps it that way).

It hands the thin node modules what they need and nothing more:

- ``ComfyDenoiser``: a ComfyUI MODEL as the core's ``Denoiser`` (eps(x_t, t, context) through
  ``model.model.diffusion_model``, alpha_bar = 1 / (1 + sigma^2) from ``model_sampling``, LDM <->
  diffusers layer names from ``comfy.utils.unet_to_diffusers``).
- ``check_sd1``: refuses a MODEL that is not SD-1.x shaped, before anything is loaded or copied.
- ``encode_prompts`` / ``conditioning_rows``: text through the MODEL's CLIP, or ComfyUI
  CONDITIONING, into (1, L, D) embeddings.
- ``run_erase``: one call of the core's ``erase`` inside ComfyUI: model loaded by
  ``comfy.model_management``, inference mode off, normal clones of the (inference-tensor) weights,
  progress bar + Cancel check every step, the user's weights restored whatever happens.
- ``patched_clone``: an erasure as ``("diff", ...)`` patches on a ``model.clone()``.
- ``loras_folder``: where the stock LoRA loaders look.

The ComfyUI facts this relies on, and where to read them in ComfyUI's source, are in
docs/COMFYUI_NOTES.md; the tests run on a March-2024 tree and on 0.3.64 (README, "Tests").
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
import torch
from tqdm import tqdm

from ..unlearn_core.conditioning import Conditioning, common_length
from ..unlearn_core.config import EraseConfig
from ..unlearn_core.delta import Delta
from ..unlearn_core.erasure_check import describe
from ..unlearn_core.errors import ConfigError, ModelError
from ..unlearn_core.files import to_state_dict
from ..unlearn_core.judge_stop import describe as describe_judged
from ..unlearn_core.result import EraseResult
from ..unlearn_core.selection import select_layers
from ..unlearn_core.trainer import StepInfo, check_rank, erase

log = logging.getLogger(__name__)

Tensor = torch.Tensor
SD1_CONTEXT_DIM = 768
UNET_PREFIX = "diffusion_model."


# ---- the model ------------------------------------------------------------------------------

def check_sd1(model: Any, input_name: str = "model") -> None:
    """Raise ModelError naming ``input_name`` unless ``model`` is an SD-1.x (eps, 768-context) UNet.

    Reads only the model's config: nothing is loaded or copied.
    """
    base = getattr(model, "model", None)
    config = getattr(getattr(base, "model_config", None), "unet_config", None)
    if base is None or not isinstance(config, dict) or not hasattr(base, "diffusion_model"):
        raise ModelError(f"{input_name}: this is not a ComfyUI diffusion MODEL. Fix: connect the "
                         "MODEL output of a checkpoint loader (an SD-1.x checkpoint).")
    name = type(base.model_config).__name__
    problems = []
    if "num_res_blocks" not in config:
        problems.append(f"it is not a UNet ({name})")
    ctx = config.get("context_dim")
    if ctx != SD1_CONTEXT_DIM:
        problems.append(f"its cross-attention takes {ctx}-wide text (SD-1.x: 768; SD-2: 1024; "
                        "SDXL: 2048)")
    if config.get("adm_in_channels"):
        problems.append("it has SDXL-style extra (pooled/size) conditioning")
    if config.get("in_channels", 4) != 4:
        problems.append(f"it takes {config.get('in_channels')} latent channels (SD-1.x: 4; "
                        "inpainting models take 9)")
    model_type = getattr(getattr(base, "model_type", None), "name", "EPS")
    if model_type != "EPS":
        problems.append(f"it predicts {model_type} (SD-1.x predicts noise, eps)")
    if problems:
        raise ModelError(
            f"{input_name}: Unlearn erases from Stable Diffusion 1.x models only, and this "
            f"MODEL ({name}) is not one: " + "; ".join(problems) + ". Fix: load an SD-1.x "
            "checkpoint (1.4, 1.5 or a fine-tune of them) and connect its MODEL here."
        )


def layer_names(model: Any) -> dict[str, str]:
    """Native (LDM) layer name -> canonical (diffusers) name, for every layer with a weight.

    From ComfyUI's own map for this UNet's config (``comfy.utils.unet_to_diffusers``) -- the map
    its LoRA loader uses, so files we write load back onto the same layers. It is derived from the
    config, so it also fits UNets of other depths (the test fixture), where a fixed SD-1 block
    table would not.
    """
    unet_config = model.model.model_config.unet_config
    table = {}
    for diffusers_key, ldm_key in comfy.utils.unet_to_diffusers(unet_config).items():
        if ldm_key.endswith(".weight") and diffusers_key.endswith(".weight"):
            table[ldm_key[: -len(".weight")]] = diffusers_key[: -len(".weight")]
    return table


def layer_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Canonical layer name -> weight shape, for every mapped layer of ``model``'s UNet."""
    names = layer_names(model)
    sd_shapes = {k: tuple(v.shape) for k, v in model.model.diffusion_model.state_dict().items()}
    return {canon: sd_shapes[native + ".weight"] for native, canon in names.items()
            if native + ".weight" in sd_shapes}


def _clone_saved_activations(module: torch.nn.Module) -> bool:
    """Whether training through ``module`` needs the saved-tensor clone hook.

    Older ComfyUI (the March-2024 tree) adds residuals in place inside ``BasicTransformerBlock``
    (``x += n``) after autograd saved ``x``; backward then fails ("modified by an inplace
    operation") unless every saved tensor is copied -- which costs activation memory. Newer hosts
    kept one ``x += x_skip``, but only under ``if self.ff_in:`` / ``if self.is_res:``, a path
    SD-1's blocks never take. So the answer comes from the path the model's own blocks execute:
    each in-place add of the block's source counts only if every ``if`` around it is true for one
    of ``module``'s blocks (tests that read something other than ``self.<attribute>`` count as
    true). Source unreadable -> True (correct everywhere; costs memory). docs/COMFYUI_NOTES.md §2.
    """
    blocks: dict[type, list] = {}
    for m in module.modules():
        if type(m).__name__ == "BasicTransformerBlock":
            blocks.setdefault(type(m), []).append(m)
    for cls, instances in blocks.items():
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            return True
        for guards in _inplace_add_guards(tree):
            if any(all(_guard_holds(test, negate, block) for test, negate in guards)
                   for block in instances):
                return True
    return False


def _inplace_add_guards(tree: ast.AST) -> Iterator[list[tuple[ast.expr, bool]]]:
    """For each ``name += ...`` in ``tree``: the ``(if-test, in its else branch)`` pairs around it."""
    def walk(node: ast.AST, guards: list) -> Iterator[list]:
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add) \
                and isinstance(node.target, ast.Name):
            yield list(guards)
        if isinstance(node, ast.If):
            for child in node.body:
                yield from walk(child, [*guards, (node.test, False)])
            for child in node.orelse:
                yield from walk(child, [*guards, (node.test, True)])
            return
        for child in ast.iter_child_nodes(node):
            yield from walk(child, guards)

    yield from walk(tree, [])


_GUARD_NODES = (ast.Expression, ast.Attribute, ast.Name, ast.Load, ast.Constant, ast.BoolOp,
                ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare, ast.Is, ast.IsNot, ast.Eq,
                ast.NotEq)


def _guard_holds(test: ast.expr, negate: bool, block: torch.nn.Module) -> bool:
    """The value of an ``if`` test that reads only ``self.<attr>`` on ``block``; True otherwise."""
    expr = ast.Expression(test)
    names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
    if names - {"self", "None", "True", "False"} or \
            not all(isinstance(n, _GUARD_NODES) for n in ast.walk(expr)):
        return True
    try:
        value = bool(eval(compile(expr, "<guard>", "eval"), {"__builtins__": {}}, {"self": block}))
    except Exception:  # an attribute this block lacks: cannot tell, assume the path runs
        return True
    return value != negate


def _pack_clone(t: Tensor) -> Tensor:
    # A tensor autograd saves that a later in-place add would overwrite: keep a private copy.
    return t.clone() if t.requires_grad else t


def _unpack(t: Tensor) -> Tensor:
    return t


class ComfyDenoiser:
    """A ComfyUI MODEL as the core's ``Denoiser``.

    eps = ``model.model.diffusion_model(x_t, t, context=...)`` with DDPM-scaled x_t and integer
    timesteps (``apply_model`` would return x0, not eps). Inputs are cast to the dtype ComfyUI
    computes in (the weights' dtype, or ``manual_cast_dtype``); the core's deltas stay float32.

    ``autoload``: make this MODEL the loaded one before every call. Clones of one checkpoint share
    a torch module and ComfyUI patches the loaded clone's weights into it, so two MODELs (a base
    and an erased clone) can take turns in one computation (the metrics' samplers) -- ComfyUI
    swaps the patches when the other one is called; a no-op while it stays loaded.
    """

    def __init__(self, model: Any, autoload: bool = False) -> None:
        self.model_patcher = model
        self.autoload = autoload
        base = model.model
        self.module = base.diffusion_model
        sigmas = base.model_sampling.sigmas.detach().double().cpu()
        self.alphas_cumprod = 1.0 / (1.0 + sigmas**2)  # (1000,) float64
        unet_config = base.model_config.unet_config
        self.in_channels = int(unet_config.get("in_channels", 4))
        self.context_dim = int(unet_config["context_dim"])
        self.compute_dtype = base.manual_cast_dtype or base.get_dtype()
        self.clone_saved = _clone_saved_activations(self.module)
        self._to_canonical = layer_names(model)
        self._to_native = {v: k for k, v in self._to_canonical.items()}

    def __call__(self, x_t: Tensor, t: Tensor, context: Tensor, **extra: Any) -> Tensor:
        hooks = (torch.autograd.graph.saved_tensors_hooks(_pack_clone, _unpack)
                 if self.clone_saved and torch.is_grad_enabled() else contextlib.nullcontext())
        if self.autoload:
            comfy.model_management.load_models_gpu([self.model_patcher])
        with hooks:
            return self.module(x_t.to(self.compute_dtype), t.float(),
                               context=context.to(self.compute_dtype), **extra)

    def canonical_name(self, native: str) -> str:
        try:
            return self._to_canonical[native]
        except KeyError:
            raise ModelError(f"layer {native!r} has no diffusers name in this UNet's map; "
                             "Fix: choose another selection") from None

    def native_name(self, canonical: str) -> str:
        return self._to_native[canonical]


@contextlib.contextmanager
def _normal_weights(module: torch.nn.Module) -> Iterator[int]:
    """Swap every inference-tensor parameter/buffer of ``module`` for a normal clone; restore after.

    ComfyUI builds models under ``torch.inference_mode()``; autograd refuses to save such tensors
    for backward, even frozen weights downstream of a trained layer (docs/COMFYUI_NOTES.md §1). The
    clones hold identical values; the user's tensors are never written, and the original objects
    are put back on success, Cancel and error alike. Must run with inference mode off.
    """
    swapped: list[tuple[dict, str, Tensor]] = []
    try:
        for mod in module.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_inference():
                    mod._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                    swapped.append((mod._parameters, name, p))
            for name, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    mod._buffers[name] = b.clone()
                    swapped.append((mod._buffers, name, b))
        yield len(swapped)
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original


def _load(model: Any) -> None:
    """Load ``model`` onto its device with ComfyUI's memory manager, fully (no low-VRAM split)."""
    mm = comfy.model_management
    kwargs: dict[str, Any] = {}
    params = inspect.signature(mm.load_models_gpu).parameters
    if "memory_required" in params:
        # room for the clones of the weights made for training
        kwargs["memory_required"] = int(model.model_size())
    if "force_full_load" in params:  # newer ComfyUI only
        kwargs["force_full_load"] = True
    mm.load_models_gpu([model], **kwargs)


def _check_fully_loaded(module: torch.nn.Module, model: Any) -> None:
    device = torch.device(model.load_device)
    off = [n for n, p in module.named_parameters() if p.device.type != device.type]
    if off:
        raise ModelError(
            f"model: {len(off)} weights stayed off {device} after loading (low-VRAM mode), e.g. "
            f"{off[0]}; training needs the whole UNet on one device. Fix: "
            "free VRAM (close other models), start ComfyUI with --normalvram, or use "
            "parametrization lora / selection xattn-kv."
        )


# ---- text -----------------------------------------------------------------------------------

def _last_token(tokens: Any) -> int | None:
    """Index of the last real token (BOS = 0) in ComfyUI's tokenizer output, or None."""
    try:
        chunk = next(iter(tokens.values()))[0] if isinstance(tokens, dict) else tokens[0]
        ids = [t[0] for t in chunk]
        if not all(isinstance(i, int) for i in ids):
            return None  # textual-inversion embeddings: positions unknown
        end = ids[-1]  # chunks end with (and pad with) the end token
        return max(0, ids.index(end, 1) - 1)
    except (StopIteration, IndexError, TypeError, ValueError):
        return None


def encode_prompts(clip: Any, texts: Sequence[str], input_name: str = "clip"
                   ) -> tuple[list[Tensor], list[int | None]]:
    """(1, L, D) embeddings of ``texts`` through ``clip`` and each text's last real token index."""
    if clip is None:
        raise ConfigError(input_name, None, "no CLIP connected", "connect the checkpoint's CLIP")
    embs, last = [], []
    for text in texts:
        tokens = clip.tokenize(text)
        out = clip.encode_from_tokens(tokens, return_pooled=True)
        embs.append(out[0])
        last.append(_last_token(tokens))
    return embs, last


def conditioning_rows(cond: Any, input_name: str) -> list[Tensor]:
    """A ComfyUI CONDITIONING (list of [tensor (B, L, D), dict]) as a list of (1, L, D) rows."""
    if not isinstance(cond, (list, tuple)) or not cond:
        raise ConfigError(input_name, type(cond).__name__, "empty or not a CONDITIONING",
                          "connect a CLIP Text Encode output")
    rows = []
    for entry in cond:
        emb = entry[0] if isinstance(entry, (list, tuple)) else entry
        if not isinstance(emb, Tensor) or emb.dim() != 3:
            raise ConfigError(input_name, type(emb).__name__, "an entry is not a (B, L, D) tensor",
                              "connect a CLIP Text Encode output")
        rows.extend(emb[i : i + 1] for i in range(emb.shape[0]))
    return rows


# ---- one erasure ----------------------------------------------------------------------------

def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if Cancel was pressed."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class _ProgressText:
    """A line of text under the running node's progress bar, where the web UI shows one
    (ComfyUI 0.3.x: ``PromptServer.send_progress_text``); a no-op on hosts without it and when no
    server runs (headless). At most two a second, and the last one always."""

    def __init__(self) -> None:
        self._last = 0.0
        self._send = None
        try:
            import server
            from comfy_execution.utils import get_executing_context
        except ImportError:  # the 2024 host
            return
        instance = getattr(server.PromptServer, "instance", None)
        context = get_executing_context()
        if instance is not None and context is not None and hasattr(instance, "send_progress_text"):
            self._send = lambda text: instance.send_progress_text(text, context.node_id)

    def send(self, text: str, last: bool = False) -> None:
        now = time.monotonic()
        if self._send is not None and (last or now - self._last >= 0.5):
            self._last = now
            self._send(text)


def run_erase(model: Any, conditioning: Conditioning | Callable[[], Conditioning],
              config: EraseConfig, label: str = "Unlearn", judge: Any = None) -> EraseResult:
    """The core's ``erase`` on a ComfyUI MODEL; the MODEL's weights are never written.

    ``conditioning`` may be a callable that builds it: it runs after the MODEL passed the cheap
    checks, so a wrong model is named before any prompt is encoded.
    Progress goes to ComfyUI's ProgressBar and a console tqdm bar; Cancel is checked every step.
    ``judge``: the images' judge of ``judge_every`` (``judge_stop.Judge``).
    """
    check_sd1(model)
    if callable(conditioning):
        conditioning = conditioning()
    training = config.method == "train"
    if training:  # the core checks this too, but only after the weights were cloned
        check_rank(config, select_layers(model.model.diffusion_model, config.selection))
    check_interrupt()
    _load(model)
    denoiser = ComfyDenoiser(model)
    _check_fully_loaded(denoiser.module, model)
    total = config.steps if training else 1
    pbar = comfy.utils.ProgressBar(total)
    bar = tqdm(total=total, desc=f"{label}: {'erasing' if training else 'UCE edit'}",
               unit="step", disable=not training)

    text = _ProgressText()
    residual = ""  # the last erasure check's, when check_every is set
    judged = ""  # the last judged check's, when judge_every is set

    def on_step(info: StepInfo) -> None:
        nonlocal residual, judged
        if info.residuals is not None:
            residual = f" · residual {max(info.residuals):.3f}"
        if info.judged is not None:
            judged = f" · judged {max(info.judged):.2f}"
        pbar.update_absolute(info.total if info.stopping else info.step, info.total)
        left = info.elapsed / info.step * (info.total - info.step)
        why = ("the judge sees every concept gone" if info.judged is not None
               else "the residual stopped falling")
        text.send(f"stopped after {info.step} steps: {why}{residual}{judged}"
                  if info.stopping else
                  f"step {info.step}/{info.total} · loss {info.loss:.4g}{residual}{judged} · "
                  f"{left:.0f} s left", last=info.stopping or info.step == info.total)
        bar.update(1)
        bar.set_postfix(loss=f"{info.loss:.4g}", refresh=False)
        check_interrupt()  # Cancel: raises; the trainer's and our cleanup run on the way out

    start = time.perf_counter()
    # Training needs normal clones of the weights (autograd saves them); UCE only reads them.
    weights = _normal_weights(denoiser.module) if training else contextlib.nullcontext(0)
    try:
        with torch.inference_mode(False), torch.enable_grad(), weights as n_cloned:
            log.debug("%s: %d weight tensors cloned out of inference mode", label, n_cloned)
            result = erase(denoiser, conditioning, config, callback=on_step if training else None,
                           judge=judge)
    finally:
        bar.close()
        comfy.model_management.soft_empty_cache()
    if not training:
        pbar.update_absolute(1, 1)
    log.info("%s: %s on %d layers in %.1f s%s", label, config.method, len(result.deltas),
             time.perf_counter() - start,
             f", final loss {result.loss_history[-1]:.4g}" if result.loss_history else "")
    for line in (describe(result.metadata), describe_judged(result.metadata)):
        if line:
            log.info("%s: %s", label, line)
    return result


def _delta_shape(delta: Delta) -> tuple[int, ...]:
    if delta.is_lora:
        return (int(delta.up.shape[0]), *delta.down.shape[1:])
    return tuple(delta.diff.shape)


def patched_clone(model: Any, deltas: dict[str, Delta], strength: float,
                  input_name: str = "erasure") -> Any:
    """``model.clone()`` carrying the erasure at ``strength``; the input MODEL is not touched.

    Full deltas become ``("diff", (dW,))`` patches (``add_patches``); LoRA deltas go through
    ``comfy.sd.load_lora_for_models`` -- the stock LoRA loader's own path, so they stay low-rank
    in memory and patch exactly as the saved file would. Both are portable across ComfyUI
    versions (docs/COMFYUI_NOTES.md §4). Every layer must exist in ``model`` with the delta's shape;
    otherwise ModelError names them.
    """
    to_native = {v: k for k, v in layer_names(model).items()}
    shapes = {k: tuple(v.shape) for k, v in model.model.diffusion_model.state_dict().items()}
    diffs, loras, missing, wrong = {}, {}, [], []
    for canonical, delta in deltas.items():
        native = to_native.get(canonical)
        key = f"{native}.weight" if native else None
        if key not in shapes:
            missing.append(canonical)
        elif _delta_shape(delta) != shapes[key]:
            wrong.append(f"{canonical} {_delta_shape(delta)} vs {shapes[key]}")
        elif delta.is_lora:
            loras[canonical] = delta
        else:
            diffs[UNET_PREFIX + key] = ("diff", (delta.diff,))
    if missing or wrong or not deltas:
        raise ModelError(
            f"{input_name}: {len(deltas) - len(missing) - len(wrong)} of {len(deltas)} layers fit "
            f"this model; {len(missing)} not found (e.g. {missing[:2]}), {len(wrong)} of another "
            f"shape (e.g. {wrong[:2]}). Fix: apply the erasure to the SD-1.x model it was made "
            "for (or one of the same architecture)."
        )
    out = model.clone()
    if strength == 0.0:  # the base model exactly: no patch at all
        return out
    if diffs:
        applied = out.add_patches(diffs, strength)
        if len(applied) != len(diffs):
            raise ModelError(f"{input_name}: ComfyUI accepted {len(applied)} of {len(diffs)} "
                             "patches. Fix: report this with your ComfyUI version.")
    if loras:
        keys = [UNET_PREFIX + to_native[c] + ".weight" for c in loras]
        before = {k: len(out.patches.get(k, [])) for k in keys}
        out, _ = comfy.sd.load_lora_for_models(out, None, to_state_dict(loras), strength, 0)
        taken = sum(len(out.patches.get(k, [])) > before[k] for k in keys)
        if taken != len(keys):
            raise ModelError(f"{input_name}: ComfyUI's LoRA loader took {taken} of {len(keys)} "
                             "layers. Fix: report this with your ComfyUI version.")
    log.info("Unlearn: %d layers patched at strength %g", len(deltas), strength)
    return out


# ---- sampling for the metrics ---------------------------------------------------------------

def sampling_denoiser(model: Any, input_name: str = "model") -> ComfyDenoiser:
    """A MODEL as a denoiser for no-grad sampling (loaded on first use; see ``autoload``)."""
    check_sd1(model, input_name)
    comfy.model_management.load_models_gpu([model])
    return ComfyDenoiser(model, autoload=True)


def text_encoder(clip: Any, input_name: str = "clip"):
    """``encode(prompts) -> (N, L, D)`` through the MODEL's CLIP (one token length for all)."""
    def encode(prompts: Sequence[str]) -> Tensor:
        embs, _ = encode_prompts(clip, list(prompts), input_name)
        return torch.cat(common_length(embs))

    return encode


def last_tokens(clip: Any):
    """``last(prompts)``: each prompt's last real token index in ``clip``'s tokens (UCE)."""
    def last(prompts: Sequence[str]) -> list[int | None]:
        return [_last_token(clip.tokenize(text)) for text in prompts]

    return last


def vae_decoder(vae: Any, model: Any):
    """``decode(x0) -> images (B, 3, H, W)`` in [0, 1]: the sampler's latents (the model's scaled
    latent space) through ComfyUI's latent format and the VAE."""
    latent_format = model.model.latent_format

    def decode(x0: Tensor) -> Tensor:
        images = vae.decode(latent_format.process_out(x0.float().cpu()))  # (B, H, W, 3)
        return images.movedim(-1, 1).float().clamp(0, 1).cpu()

    return decode


def vae_encoder(vae: Any, model: Any):
    """``encode(images (B, 3, H, W) in [0, 1]) -> latents`` in the model's scaled latent space."""
    latent_format = model.model.latent_format

    def encode(images: Tensor) -> Tensor:
        latents = vae.encode(images.movedim(1, -1)[..., :3].float().cpu())  # takes (B, H, W, 3)
        return latent_format.process_in(latents).float().cpu()

    return encode


def gradient_scope(model: Any):
    """A context for the attacks' optimisation on ``model``: loaded fully (its patches in the
    weights), inference mode off, autograd on, normal clones of the inference-tensor weights
    (restored after, as in ``run_erase``). Gradients reach only the attack's own rows."""
    @contextlib.contextmanager
    def scope() -> Iterator[None]:
        _load(model)
        module = model.model.diffusion_model
        with torch.inference_mode(False), torch.enable_grad(), _normal_weights(module):
            yield

    return scope


def progress_callback(total: int):
    """``on_progress(done, total)`` for the metrics: ProgressBar + Cancel check."""
    pbar = comfy.utils.ProgressBar(total)

    def on_progress(done: int, total_now: int) -> None:
        pbar.update_absolute(done, total_now)
        check_interrupt()

    return on_progress


def torch_device() -> torch.device:
    """The device ComfyUI computes on."""
    return comfy.model_management.get_torch_device()


# ---- folders --------------------------------------------------------------------------------

def loras_folder() -> Path:
    """The first ``loras`` folder: where LoraLoaderModelOnly looks."""
    return Path(folder_paths.get_folder_paths("loras")[0])


def clip_files() -> list[str]:
    """Weight files in ComfyUI's ``clip`` folders (where users put open_clip weights too)."""
    return folder_paths.get_filename_list("clip")


def clip_file(name: str) -> Path:
    """Full path of a file from ``clip_files``; ConfigError naming ``clip_weights`` if missing."""
    path = folder_paths.get_full_path("clip", name)
    if path is None:
        raise ConfigError("clip_weights", name, "not found in the clip folders",
                          "put the open_clip weights file into models/clip and refresh")
    return Path(path)
