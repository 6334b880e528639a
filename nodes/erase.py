"""The erase nodes: widgets -> EraseConfig -> one core call (through ``host.run_erase``) -> outputs.

- ``UnlearnEraseConcept``: the simple node (concept, kind of concept, loss, steps, seed).
- ``UnlearnEraseConceptAdvanced``: every EraseConfig field, ``method`` included, plus optional
  CONDITIONING inputs instead of text.
- ``UnlearnEraseConceptUCE``: UCE's closed-form edit (seconds) with only the inputs UCE reads.

Why UCE has its own node: UCE shares none of training's settings (steps, loss, learning
rate, EMA, sampling) and has its own (guide, lambda, scales, token). The classic node API cannot
hide widgets, so a method switch on one node would leave half the widgets silently doing nothing
for either method. The Advanced node still carries ``method`` because it mirrors every config
field one to one (the CLI flags and the file metadata), which is what lets one switch compare the
two methods on otherwise identical settings.
"""

from __future__ import annotations

import logging
from typing import Any

from ..unlearn_core.conditioning import Conditioning, EncodedRows, encode_conditioning
from ..unlearn_core.config import EraseConfig, config_fields
from ..unlearn_core.errors import ConfigError
from .lazy_host import host
from .plot import loss_plot
from .presets import USE_CASE_HELP, USE_CASES
from .widgets import build_config, concepts_problem, field_input, lines, node_defaults

log = logging.getLogger(__name__)

CATEGORY = "unlearn"
ERASURE = "UNLEARN_ERASURE"

MODEL_TIP = "The SD-1.x model to erase from (it is not modified: the output is a patched copy)."
CLIP_TIP = "The model's text encoder: encodes the concepts and the empty prompt."
CONCEPTS_TIP = ("Concepts to erase, one per line (e.g. 'Van Gogh'); several lines erase several "
                "concepts in one run.")
OUT_MODEL_TIP = "The erased model: a copy of the input MODEL with the erasure patched on."
OUT_ERASURE_TIP = "The erasure (weight changes, config, loss history): save it as a LoRA or apply it."
OUT_PLOT_TIP = "The training loss per step as a picture (connect a Preview Image)."

from .fields import ADVANCED_FIELDS  # noqa: E402  (the widget order; see nodes/fields.py)

JUDGE_CLIP = "UNLEARN_CLIP"  # nodes/metrics.py's CLIP_MODEL: what Unlearn CLIP Loader returns

UCE_FIELDS = ("concepts", "uce_guide", "retain_prompts", "uce_lambda", "uce_erase_scale",
              "uce_preserve_scale", "uce_token")
UCE_TIPS = {
    "uce_guide": "What the concepts are mapped to, e.g. 'art' for a style or 'a man' for an "
                 "identity; empty = the empty prompt.",
    "retain_prompts": "Concepts to preserve, one per line: their keys/values are held to the "
                      "original (UCE's preserve set), e.g. other artists or other people.",
}


# ---- conditioning ---------------------------------------------------------------------------

CLIP_END_TOKEN = 49407  # CLIP's end-of-text id (SD-1's tokenizer)


def token_counter(clip: Any):
    """``count(text)``: the text tokens ComfyUI's tokenizer makes of ``text`` through ``clip``
    (no start, end or padding), over all its 77-token chunks -- what the core's prompt-length
    rule (``unlearn_core.prompts``) needs; the CLI counts with the same CLIP BPE."""
    def count(text: str) -> int:
        tokens = clip.tokenize(text)
        chunks = next(iter(tokens.values())) if isinstance(tokens, dict) else tokens
        total = 0
        for chunk in chunks:
            ids = [t[0] for t in chunk]
            pad = ids[-1]
            end = len(ids)
            while end > 1 and isinstance(ids[end - 1], int) and ids[end - 1] == pad:
                end -= 1  # the padding (and the end token, where it pads)
            if end > 1 and isinstance(ids[end - 1], int) and ids[end - 1] == CLIP_END_TOKEN:
                end -= 1  # the end token, where another token pads
            total += end - 1  # without the start token
        return total

    return count


def _labels(text: tuple[str, ...], rows: list, input_name: str, cond_name: str) -> tuple[str, ...]:
    """Names for conditioning rows: the text lines if they match in number, else placeholders."""
    if not text:
        return tuple(f"<{cond_name} {i + 1}>" for i in range(len(rows)))
    if len(text) != len(rows):
        raise ConfigError(input_name, "\n".join(text),
                          f"{len(text)} lines for {len(rows)} {cond_name} entries",
                          f"leave {input_name} blank or give one line per {cond_name} entry")
    return text


def make_conditioning(clip: Any, config: EraseConfig, rows: EncodedRows | None = None
                      ) -> Conditioning:
    """The core's ``encode_conditioning`` with ComfyUI's CLIP for the texts and the CONDITIONING
    inputs, where connected, for the texts they replace (``rows``)."""
    cond = encode_conditioning(host.text_encoder(clip), config, host.last_tokens(clip),
                               token_counter(clip) if clip is not None else None, rows=rows)
    if cond.concept_last_token is None and config.method == "uce" and config.uce_token == "last":
        log.warning("UCE: last-token positions unknown for conditioning inputs; using all tokens")
    return cond


def _erase(model: Any, clip: Any, config: EraseConfig, label: str,
           rows: EncodedRows | None = None, judge: Any = None):
    """One host call: checks the MODEL, builds the conditioning, trains; returns the patched
    clone and the erasure."""
    result = host.run_erase(model, lambda: make_conditioning(clip, config, rows), config,
                            label=label, judge=judge)
    return host.patched_clone(model, result.deltas, 1.0), result


# ---- the nodes ------------------------------------------------------------------------------

def simple_config(concepts: str, preset: str, loss: str, steps: int, seed: int) -> EraseConfig:
    """The simple node's config: the defaults, the core's "fast" loop, the kind of concept's
    settings (``presets.USE_CASES``), then the node's four widgets."""
    if preset not in USE_CASES:
        raise ConfigError("preset", preset, "unknown preset",
                          f"choose one of: {', '.join(USE_CASES)}")
    values = {**node_defaults(), **USE_CASES[preset]}
    values.update(concepts=concepts, loss=loss, steps=steps, seed=seed)
    if loss == "cramer_wold":  # compares sets of predictions: needs a batch of 2 or more
        values["batch_size"] = max(2, values["batch_size"])
    return build_config(values)


class UnlearnEraseConcept:
    """Erase a concept from an SD-1.x MODEL by fine-tuning: one node, sensible settings."""

    CATEGORY = CATEGORY
    FUNCTION = "erase"
    RETURN_TYPES = ("MODEL", ERASURE, "IMAGE")
    RETURN_NAMES = ("model", "erasure", "loss_plot")
    OUTPUT_TOOLTIPS = (OUT_MODEL_TIP, OUT_ERASURE_TIP, OUT_PLOT_TIP)
    DESCRIPTION = ("Fine-tunes a copy of the model so it no longer draws the concept (on states "
                   "from its own EMA teacher's trajectories, as SDD; each prompt pulled to the "
                   "base model's prediction without the concept, guided away from it). Pick the "
                   "kind of concept; everything else is the core's defaults with its fast "
                   "recipe. Progress bar and Cancel work; the input MODEL is never changed.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL", {"tooltip": MODEL_TIP}),
            "clip": ("CLIP", {"tooltip": CLIP_TIP}),
            "concepts": field_input("concepts", tooltip=CONCEPTS_TIP),
            "preset": (list(USE_CASES), {"default": "identity", "tooltip": USE_CASE_HELP}),
            "loss": field_input("loss"),
            "steps": field_input("steps"),
            "seed": field_input("seed"),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, concepts=None):
        return concepts_problem(concepts) or True

    def erase(self, model, clip, concepts, preset, loss, steps, seed):
        config = simple_config(concepts, preset, loss, steps, seed)
        erased, result = _erase(model, clip, config, "Erase Concept")
        return (erased, result, loss_plot(result.loss_history, f"{preset} ({config.loss})"))


def node_judge(config: EraseConfig, model: Any, judge_clip: Any, judge_vae: Any):
    """The judge of ``judge_every`` from the Advanced node's optional inputs (None without
    judge_every); a missing input is named before any work."""
    if not config.judge_every:
        return None
    for value, name, what in ((judge_clip, "judge_clip", "a CLIP model (Unlearn CLIP Loader)"),
                              (judge_vae, "judge_vae", "the checkpoint's VAE")):
        if value is None:
            raise ConfigError(name, None, f"judge_every = {config.judge_every} samples images and "
                              "asks a judge whether they still show the concept; the judge needs "
                              f"{what}", f"connect {what} to {name}, or set judge_every to 0")
    from ..unlearn_core.judge_stop import ScoreJudge
    from ..unlearn_core.metrics.scorers import ClipScorer

    return ScoreJudge(ClipScorer(judge_clip), host.vae_decoder(judge_vae, model),
                      config.concepts, config.judge_threshold)


class UnlearnEraseConceptAdvanced:
    """Every setting of the erasure, and prompts as CONDITIONING if wanted."""

    CATEGORY = CATEGORY
    FUNCTION = "erase"
    RETURN_TYPES = ("MODEL", ERASURE, "IMAGE")
    RETURN_NAMES = ("model", "erasure", "loss_plot")
    OUTPUT_TOOLTIPS = (OUT_MODEL_TIP, OUT_ERASURE_TIP, OUT_PLOT_TIP)
    DESCRIPTION = ("Every erasure setting (the same names as the CLI flags and the saved file's "
                   "metadata). Optional CONDITIONING inputs replace the text of the concepts, "
                   "the anchor (what the concepts map to) and the retain prompts.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required = {"model": ("MODEL", {"tooltip": MODEL_TIP}),
                    "clip": ("CLIP", {"tooltip": CLIP_TIP})}
        for name in ADVANCED_FIELDS:
            required[name] = field_input(name)
        return {"required": required, "optional": {
            "concept_conditioning": ("CONDITIONING", {"tooltip": (
                "Concepts as conditioning instead of text: one entry per concept (combine "
                "several with Conditioning (Combine)); concepts then only names them.")}),
            "anchor_conditioning": ("CONDITIONING", {"tooltip": (
                "What the concepts are mapped to instead of the empty prompt (training: the "
                "target and the sampler's negative; UCE: the guide).")}),
            "retain_conditioning": ("CONDITIONING", {"tooltip": (
                "Retain/preserve prompts as conditioning instead of retain_prompts text.")}),
            "judge_clip": (JUDGE_CLIP, {"tooltip": (
                "With judge_every: the CLIP model (Unlearn CLIP Loader) that judges whether the "
                "sampled images still show each concept (score >= judge_threshold).")}),
            "judge_vae": ("VAE", {"tooltip": "With judge_every: the VAE that decodes the sampled "
                                             "images for the judge (the checkpoint's)."}),
        }}

    def erase(self, model, clip, concept_conditioning=None, anchor_conditioning=None,
              retain_conditioning=None, judge_clip=None, judge_vae=None, **values):
        values = dict(values)
        rows = EncodedRows(*(
            host.conditioning_rows(cond, name) if cond is not None else None
            for cond, name in ((concept_conditioning, "concept_conditioning"),
                               (anchor_conditioning, "anchor_conditioning"),
                               (retain_conditioning, "retain_conditioning"))))
        if rows.concepts is not None:
            values["concepts"] = _labels(lines(values.get("concepts")), rows.concepts, "concepts",
                                         "concept_conditioning")
        if rows.retain is not None:
            values["retain_prompts"] = _labels(lines(values.get("retain_prompts")), rows.retain,
                                               "retain_prompts", "retain_conditioning")
        config = build_config(values)
        judge = node_judge(config, model, judge_clip, judge_vae)
        erased, result = _erase(model, clip, config, "Erase Concept (Advanced)", rows, judge)
        title = f"{config.method} {config.objective} ({config.loss})"
        return (erased, result, loss_plot(result.loss_history, title))


class UnlearnEraseConceptUCE:
    """UCE: edit cross-attention keys/values in closed form -- an erasure in seconds."""

    CATEGORY = CATEGORY
    FUNCTION = "erase"
    RETURN_TYPES = ("MODEL", ERASURE)
    RETURN_NAMES = ("model", "erasure")
    OUTPUT_TOOLTIPS = (OUT_MODEL_TIP, OUT_ERASURE_TIP)
    DESCRIPTION = ("Unified Concept Editing (Gandikota et al. 2024): maps the concepts' text "
                   "keys/values in every cross-attention to those of the guide, holding the "
                   "preserved concepts, in one linear solve. No training, no progress to wait for.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        required = {"model": ("MODEL", {"tooltip": MODEL_TIP}),
                    "clip": ("CLIP", {"tooltip": CLIP_TIP})}
        for name in UCE_FIELDS:
            tip = CONCEPTS_TIP if name == "concepts" else UCE_TIPS.get(name)
            required[name] = field_input(name, tooltip=tip)
        return {"required": required}

    @classmethod
    def VALIDATE_INPUTS(cls, concepts=None):
        return concepts_problem(concepts) or True

    def erase(self, model, clip, **values):
        config = build_config({**values, "method": "uce"})
        erased, result = _erase(model, clip, config, "Erase Concept (UCE)")
        return (erased, result)


def _check_fields() -> None:
    missing = set(config_fields()) - set(ADVANCED_FIELDS)
    if missing:  # caught by the tests; a new config field must get a widget (at the end)
        log.warning("Unlearn: config fields without a widget on the Advanced node: %s",
                    sorted(missing))


_check_fields()

NODE_CLASS_MAPPINGS = {
    "UnlearnEraseConcept": UnlearnEraseConcept,
    "UnlearnEraseConceptAdvanced": UnlearnEraseConceptAdvanced,
    "UnlearnEraseConceptUCE": UnlearnEraseConceptUCE,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UnlearnEraseConcept": "Erase Concept (Unlearn)",
    "UnlearnEraseConceptAdvanced": "Erase Concept Advanced (Unlearn)",
    "UnlearnEraseConceptUCE": "Erase Concept with UCE (Unlearn)",
}
