"""The measuring nodes: thin adapters over ``unlearn_core.metrics``.

- ``UnlearnCLIPLoader``: an open_clip model from a local file in the ``clip`` folder.
- ``UnlearnCLIPScore``: 100 * max(cos(image, text), 0) per image and the mean.
- ``UnlearnDirectionalSimilarity``: cos(E(after) - E(before), E(target) - E(source)) per pair.
- ``UnlearnProbe``: the partial-diffusion probe (base model for the first psi of a trajectory,
  erased model for the rest): the curve, the CCS-style score, the finished images.
- ``UnlearnReport``: before/after images of erased and retained prompts, scored: a grid, a plot
  and a summary (with a red-team attack's success rate when one is connected).
- ``UnlearnAttack``: a red-team attack on the erased model (concept inversion, prompt attack, or
  the probe): the attacked images, the attack success rate and a summary.

Input names are the metrics configs' field names (``ProbeConfig``, ``ReportConfig``) and the core
functions' argument names, so the core's errors name the widget to change. IMAGE tensors are
(B, H, W, C) in ComfyUI and (B, 3, H, W) in the core: converted here, at the boundary only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..unlearn_core.attacks.config import KINDS, AttackConfig
from ..unlearn_core.config import _check_field
from ..unlearn_core.errors import ConfigError
from ..unlearn_core.metrics.config import ProbeConfig, ReportConfig, parse_psis, parse_seeds
from ..unlearn_core.prompts import check_prompt_lengths
from .erase import token_counter
from .lazy_host import host
from .widgets import field_input

CATEGORY = "unlearn/measure"
CLIP_MODEL = "UNLEARN_CLIP"
ATTACK = "UNLEARN_ATTACK"
AUTO_ARCH = "auto (from the file)"

TEMPLATE_TIP = ("How each prompt is put to CLIP: '{}' is the prompt itself; e.g. 'a photo of {}'. "
                "The same template must be used to compare scores.")
SIZE_TIP = "Image size in pixels for the generated images (SD-1.x: 512)."


def to_core_images(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, 3, H, W) in [0, 1]."""
    return images[..., :3].movedim(-1, 1).float().clamp(0, 1)


def to_comfy_image(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) or (B, 3, H, W) in [0, 1] -> ComfyUI IMAGE (B, H, W, 3)."""
    if image.dim() == 3:
        image = image[None]
    return image.movedim(1, -1).float().clamp(0, 1).cpu().contiguous()


def file_architecture(path: Path) -> str:
    """The open_clip architecture a weights file names in its metadata (``open_clip_model``)."""
    name = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            name = (f.metadata() or {}).get("open_clip_model")
    if not name:
        raise ConfigError("clip_arch", AUTO_ARCH, f"{path.name} does not name its architecture",
                          "choose the architecture these weights were trained as (e.g. ViT-L-14)")
    return name


def _prompt_lines(text: str, field: str) -> list[str]:
    prompts = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(field, text, "no prompt given", "type a prompt (one per line, or one "
                          "line for every image)")
    return prompts


def widget_problem(node_cls: type, config_cls: type, **values: Any) -> str | None:
    """The first problem with these widget values, for VALIDATE_INPUTS (None when all are fine).

    ComfyUI runs VALIDATE_INPUTS before any node of the prompt executes, so a typo in ``psis``
    fails at once instead of after an Erase node upstream has trained. Linked inputs arrive as
    None and are checked when the node runs. Hosts skip their own range check for inputs named in
    VALIDATE_INPUTS, and let NaN through anyway, so numbers are checked against the widget's range
    here.
    """
    specs = node_cls.INPUT_TYPES()["required"]
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for name, value in values.items():
        if value is None:
            continue
        try:
            if name == "psis":
                parse_psis(value)
            elif name == "seeds":
                parse_seeds(value)
            else:
                _check_field(fields[name], value)
                opts = specs[name][1]
                if "max" in opts and value > opts["max"]:
                    return (f"{name} = {value!r}: must be <= {opts['max']}. Fix: set {name} to "
                            f"{opts['max']} or less.")
        except ConfigError as e:
            return str(e)
    return None


def _model_inputs(tip_erased: str) -> dict:
    return {
        "base_model": ("MODEL", {"tooltip": "The model before the erasure."}),
        "erased_model": ("MODEL", {"tooltip": tip_erased}),
        "clip": ("CLIP", {"tooltip": "The checkpoint's text encoder (encodes the prompts)."}),
        "vae": ("VAE", {"tooltip": "The checkpoint's VAE (decodes the images)."}),
        "scorer": (CLIP_MODEL, {"tooltip": "The CLIP model that scores the images (Unlearn CLIP "
                                           "Loader)."}),
    }


def _size_inputs() -> dict:
    return {name: ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip": SIZE_TIP})
            for name in ("width", "height")}


class UnlearnCLIPLoader:
    """Load an open_clip model (weights file in models/clip) to score images."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (CLIP_MODEL,)
    RETURN_NAMES = ("clip_model",)
    OUTPUT_TOOLTIPS = ("The CLIP model, for CLIP Score, Directional Similarity, Probe and Report.",)
    DESCRIPTION = ("Loads an open_clip model from a local weights file (e.g. ViT-L-14 weights "
                   "you downloaded into models/clip). Nothing is downloaded; a file that does not "
                   "match the architecture fails with the keys that differ.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        from ..unlearn_core.metrics.clip_score import offline_architectures

        return {"required": {
            "clip_arch": ([AUTO_ARCH, *offline_architectures()], {
                "default": AUTO_ARCH, "tooltip": "The open_clip architecture of the weights; auto "
                "reads it from the file's metadata where the file names it."}),
            "clip_weights": (host.clip_files(), {
                "tooltip": "The weights file, from the clip folders (models/clip)."}),
        }}

    def load(self, clip_arch, clip_weights):
        from ..unlearn_core.metrics.clip_score import load_clip

        path = host.clip_file(clip_weights)
        arch = file_architecture(path) if clip_arch == AUTO_ARCH else clip_arch
        return (load_clip(arch, path, device=host.torch_device()),)


class UnlearnCLIPScore:
    """CLIP score of each image against its prompt (higher = the image shows the prompt more)."""

    CATEGORY = CATEGORY
    FUNCTION = "score"
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("scores", "mean", "table")
    OUTPUT_IS_LIST = (True, False, False)
    OUTPUT_NODE = True  # runs when queued; the numbers also go to the history (ui "text")
    OUTPUT_TOOLTIPS = ("CLIP score per image (0..100).", "Their mean.",
                       "A markdown table: image, prompt, score.")
    DESCRIPTION = ("CLIP score = 100 * max(cos(image, text), 0) (Hessel et al. 2021). On erased "
                   "prompts lower is better; on retained prompts unchanged is better.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "clip_model": (CLIP_MODEL, {"tooltip": "From Unlearn CLIP Loader."}),
            "images": ("IMAGE", {"tooltip": "The images to score."}),
            "prompt": ("STRING", {"default": "", "multiline": True, "dynamicPrompts": False,
                                  "tooltip": "One prompt for every image, or one line per image."}),
            "template": ("STRING", {"default": "{}", "tooltip": TEMPLATE_TIP}),
        }}

    def score(self, clip_model, images, prompt, template):
        from ..unlearn_core.metrics.clip_score import clip_score

        result = clip_score(clip_model, to_core_images(images), _prompt_lines(prompt, "prompt"),
                            template)
        table = result.table()
        return {"ui": {"text": [table]},
                "result": ([float(v) for v in result.per_image], result.mean, table)}


class UnlearnDirectionalSimilarity:
    """Did the change from before to after go the way the text says (source -> target)?"""

    CATEGORY = CATEGORY
    FUNCTION = "score"
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("scores", "mean", "summary")
    OUTPUT_IS_LIST = (True, False, False)
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("Directional similarity per image pair (-1..1).", "Their mean.",
                       "A one-line summary.")
    DESCRIPTION = ("cos(E_img(after) - E_img(before), E_txt(target) - E_txt(source)) per pair of "
                   "images made from the same seed; higher is better (the images moved from the "
                   "source text towards the target text).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        text = {"multiline": False, "dynamicPrompts": False}
        return {"required": {
            "clip_model": (CLIP_MODEL, {"tooltip": "From Unlearn CLIP Loader."}),
            "before": ("IMAGE", {"tooltip": "Images from the base model."}),
            "after": ("IMAGE", {"tooltip": "Images from the erased model, same seeds, same order."}),
            "source": ("STRING", {"default": "a painting by Van Gogh", **text,
                                  "tooltip": "What the before images show (e.g. the concept)."}),
            "target": ("STRING", {"default": "a painting", **text,
                                  "tooltip": "What the after images should show instead."}),
            "template": ("STRING", {"default": "{}", "tooltip": TEMPLATE_TIP}),
        }}

    def score(self, clip_model, before, after, source, target, template):
        from ..unlearn_core.metrics.directional import directional_similarity

        src = _prompt_lines(source, "source")
        tgt = _prompt_lines(target, "target")
        result = directional_similarity(clip_model, to_core_images(before), to_core_images(after),
                                        src, tgt, template)
        summary = (f"directional similarity {src[0]!r} -> {tgt[0]!r}: mean {result.mean:.4f} "
                   f"over {len(result.per_pair)} pairs (higher is better)")
        return {"ui": {"text": [summary]},
                "result": ([float(v) for v in result.per_pair], result.mean, summary)}


class UnlearnProbe:
    """Does the concept come back when the base model lays out the start of the image?"""

    CATEGORY = CATEGORY
    FUNCTION = "probe"
    RETURN_TYPES = ("IMAGE", "FLOAT", "IMAGE", "STRING")
    RETURN_NAMES = ("curve", "ccs", "images", "summary")
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("Presence of the concept against psi.", "CCS-style score: mean presence "
                       "over psi (lower is better).", "The finished images: rows = psi, "
                       "columns = seeds.", "A markdown summary.")
    DESCRIPTION = ("Partial-diffusion probe (Sharma et al. 2024): the base model denoises the "
                   "first psi of each trajectory, the erased model finishes it, the scorer "
                   "measures the concept in the result. An erasure that only hides the concept "
                   "lets it come back as psi grows.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required = _model_inputs("The erased model (Erase Concept's MODEL, or a LoRA loaded).")
        for name in ("concept", "psis", "seeds", "guidance", "sampling_steps", "batch_size"):
            required[name] = field_input(name, config=ProbeConfig)
        required.update(_size_inputs())
        required["template"] = ("STRING", {"default": "{}", "tooltip": TEMPLATE_TIP})
        return {"required": required}

    @classmethod
    def VALIDATE_INPUTS(cls, psis=None, seeds=None, guidance=None):
        return widget_problem(cls, ProbeConfig, psis=psis, seeds=seeds, guidance=guidance) or True

    def probe(self, base_model, erased_model, clip, vae, scorer, width, height, template,
              **values):
        from ..unlearn_core.metrics.probe import partial_diffusion_probe
        from ..unlearn_core.metrics.scorers import ClipScorer

        config = ProbeConfig(**values)  # checks the widgets before anything runs
        check_prompt_lengths({"concept": [config.concept]}, token_counter(clip))
        base = host.sampling_denoiser(base_model, "base_model")
        erased = host.sampling_denoiser(erased_model, "erased_model")
        encode = host.text_encoder(clip)
        emb = encode([config.concept, ""])
        n = len(config.seeds)
        chunks = -(-n // config.batch_size)
        total = chunks * config.sampling_steps * (2 + len(config.psis))  # an upper bound
        result = partial_diffusion_probe(
            base, erased, emb[:1], emb[1:], ClipScorer(scorer, template), config,
            host.vae_decoder(vae, base_model), latent_shape=(4, height // 8, width // 8),
            on_progress=host.progress_callback(total))
        summary = result.markdown()
        return {"ui": {"text": [summary]},
                "result": (to_comfy_image(result.plot()), result.ccs,
                           to_comfy_image(result.grid()), summary)}


class UnlearnReport:
    """Did the erasure work, and what did it cost? Before/after images, scores, a plot."""

    CATEGORY = CATEGORY
    FUNCTION = "report"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("grid", "plot", "summary")
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("Rows = prompts, columns = seeds, before | after.",
                       "Training loss and the scores before/after.", "A markdown summary.")
    DESCRIPTION = ("Generates every (prompt, seed) with the base and the erased model from the "
                   "same noise and scores each image against its prompt: on erased prompts a "
                   "lower score after is better, on retained prompts an unchanged one.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required = _model_inputs("The erased model (Erase Concept's MODEL, or a LoRA loaded).")
        for name in ("erased_prompts", "retained_prompts", "seeds", "guidance", "sampling_steps",
                     "batch_size"):
            required[name] = field_input(name, config=ReportConfig)
        required.update(_size_inputs())
        required["template"] = ("STRING", {"default": "{}", "tooltip": TEMPLATE_TIP})
        return {"required": required, "optional": {
            "erasure": ("UNLEARN_ERASURE", {"tooltip": "The erasure, for its loss curve and name "
                                                       "in the report."}),
            "attack": (ATTACK, {"tooltip": "A Red-Team Attack's result: its attack success rate "
                                           "is added to the summary."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, seeds=None, guidance=None):
        return widget_problem(cls, ReportConfig, seeds=seeds, guidance=guidance) or True

    def report(self, base_model, erased_model, clip, vae, scorer, width, height, template,
               erasure=None, attack=None, **values):
        from ..unlearn_core.metrics.report import build_report
        from ..unlearn_core.metrics.scorers import ClipScorer

        config = ReportConfig(**values)
        check_prompt_lengths({"erased_prompts": config.erased_prompts,
                              "retained_prompts": config.retained_prompts}, token_counter(clip))
        base = host.sampling_denoiser(base_model, "base_model")
        erased = host.sampling_denoiser(erased_model, "erased_model")
        title = "Erasure report"
        if erasure is not None:
            title += ": " + ", ".join(erasure.config.concepts)
        n_images = (len(config.erased_prompts) + len(config.retained_prompts)) * len(config.seeds)
        report = build_report(
            base, erased, host.text_encoder(clip), host.vae_decoder(vae, base_model),
            (4, height // 8, width // 8), ClipScorer(scorer, template), config,
            loss_history=list(erasure.loss_history) if erasure is not None else [],
            title=title, on_progress=host.progress_callback(2 * n_images))
        summary = report.markdown()
        if attack is not None:
            summary += "\n\n**Red-team attack**: " + attack.summary()
        return {"ui": {"text": [summary]},
                "result": (to_comfy_image(report.grid), to_comfy_image(report.plot), summary)}


class UnlearnAttack:
    """Red-team your own erasure: try to bring the concept back, and count how often it works."""

    CATEGORY = CATEGORY
    FUNCTION = "attack"
    RETURN_TYPES = ("IMAGE", "FLOAT", "STRING", ATTACK)
    RETURN_NAMES = ("images", "asr", "summary", "attack")
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("The images generated with the attack (the probe: every psi x seed).",
                       "Attack success rate: the share of images whose CLIP score for the concept "
                       "reaches the threshold (lower is better).",
                       "A one-line summary: ASR with its 95% interval, the rate without attack, "
                       "the budget and the UNet evaluations spent.",
                       "The attack's result, for the Erasure Report.")
    DESCRIPTION = ("Attacks the erased model to revive the concept. concept_inversion (CCE-style) "
                   "learns a few new token rows in an empty prompt with the denoising loss on "
                   "images of the concept (the base model's, or yours); prompt_attack "
                   "(UnlearnDiffAtk-style) optimises rows appended to the concept prompt; probe "
                   "lets the base model start each image. Neither model is modified.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required = _model_inputs("The erased model to attack (Erase Concept's MODEL, or a LoRA "
                                 "loaded).")
        for name in ("concept", "kind", "steps", "batch_size", "tokens", "targets", "threshold",
                     "seeds", "psis", "guidance", "sampling_steps", "batch", "seed"):
            required[name] = field_input(name, config=AttackConfig)
        required["threshold"][1].update(default=25.0, max=100.0)
        required.update(_size_inputs())
        required["template"] = ("STRING", {"default": "{}", "tooltip": TEMPLATE_TIP})
        return {"required": required, "optional": {
            "images": ("IMAGE", {"tooltip": "Your own images of the concept, as the attack's "
                                            "targets (instead of the base model's)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, seeds=None, psis=None, guidance=None, threshold=None, kind=None):
        if kind is not None and kind not in KINDS:
            return f"kind = {kind!r}: unknown attack. Fix: choose one of {', '.join(KINDS)}."
        return widget_problem(cls, AttackConfig, seeds=seeds, psis=psis, guidance=guidance,
                              threshold=threshold) or True

    def attack(self, base_model, erased_model, clip, vae, scorer, width, height, template,
               images=None, **values):
        from ..unlearn_core.attacks.core import attack
        from ..unlearn_core.metrics.scorers import ClipScorer

        config = AttackConfig(**values)  # checks the widgets before anything runs
        base = host.sampling_denoiser(base_model, "base_model")
        erased = host.sampling_denoiser(erased_model, "erased_model")
        emb = host.text_encoder(clip)([config.concept, ""])
        targets = None
        if images is not None:
            targets = host.vae_encoder(vae, base_model)(to_core_images(images))
        result = attack(base, erased, emb[:1], emb[1:], ClipScorer(scorer, template), config,
                        host.vae_decoder(vae, base_model),
                        latent_shape=(4, height // 8, width // 8), targets=targets,
                        on_progress=host.progress_callback(1),
                        grad_scope=host.gradient_scope(erased_model))
        summary = result.summary()
        return {"ui": {"text": [summary]},
                "result": (to_comfy_image(result.images), result.asr, summary, result)}


NODE_CLASS_MAPPINGS: dict[str, Any] = {
    "UnlearnCLIPLoader": UnlearnCLIPLoader,
    "UnlearnCLIPScore": UnlearnCLIPScore,
    "UnlearnDirectionalSimilarity": UnlearnDirectionalSimilarity,
    "UnlearnProbe": UnlearnProbe,
    "UnlearnReport": UnlearnReport,
    "UnlearnAttack": UnlearnAttack,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UnlearnCLIPLoader": "CLIP Loader for Scores (Unlearn)",
    "UnlearnCLIPScore": "CLIP Score (Unlearn)",
    "UnlearnDirectionalSimilarity": "CLIP Directional Similarity (Unlearn)",
    "UnlearnProbe": "Partial-Diffusion Probe (Unlearn)",
    "UnlearnReport": "Erasure Report (Unlearn)",
    "UnlearnAttack": "Red-Team Attack (Unlearn)",
}
