"""Measuring an erasure: CLIP score, CLIP directional similarity, the
partial-diffusion probe, and the before/after report. One implementation for the ComfyUI nodes,
the CLI (``unlearn score``, ``unlearn probe``) and the toy-world benchmark.

    clip = load_clip("ViT-L-14", "ViT-L-14.safetensors")           # offline, from a local file
    clip_score(clip, images, "a painting by Van Gogh").mean          # images (B, 3, H, W) in [0, 1]
    partial_diffusion_probe(base, erasure, cond, uncond, ClipScorer(clip), ProbeConfig(...), decode,
                            latent_shape).ccs
    build_report(base, erasure, encode, decode, latent_shape, scorer, ReportConfig(...)).save("out")

Directions: CLIP score on erased prompts, lower is better; on retained prompts, unchanged is better.
Directional similarity (concept -> replacement), higher is better. Probe CCS-style score, lower is
better.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy

# public name -> submodule that defines it; imported on first use (torch, open_clip)
_EXPORTS: dict[str, str] = {
    "ClipModel": "clip_score", "ClipScores": "clip_score", "clip_score": "clip_score",
    "clip_score_from_embeddings": "clip_score", "load_clip": "clip_score",
    "DEFAULT_PSIS": "config", "ProbeConfig": "config", "ReportConfig": "config",
    "DirectionalScores": "directional", "directional_similarity": "directional",
    "directional_similarity_from_embeddings": "directional",
    "DeltaErasure": "generation", "Erasure": "generation", "erased_denoiser": "generation",
    "generate_images": "generation", "initial_noise": "generation",
    "ProbeResult": "probe", "partial_diffusion_probe": "probe",
    "Report": "report", "ReportRow": "report", "build_report": "report",
    "ClassifierScorer": "scorers", "ClipScorer": "scorers", "Scorer": "scorers",
}

__all__ = [
    "ClassifierScorer", "ClipModel", "ClipScorer", "ClipScores", "DEFAULT_PSIS", "DeltaErasure",
    "DirectionalScores", "Erasure", "ProbeConfig", "ProbeResult", "Report", "ReportConfig",
    "ReportRow", "Scorer", "build_report", "clip_score", "clip_score_from_embeddings",
    "directional_similarity", "directional_similarity_from_embeddings", "erased_denoiser",
    "generate_images", "initial_noise", "load_clip", "partial_diffusion_probe"
]

if TYPE_CHECKING:
    from .clip_score import ClipModel, ClipScores, clip_score, clip_score_from_embeddings, load_clip
    from .config import DEFAULT_PSIS, ProbeConfig, ReportConfig
    from .directional import DirectionalScores, directional_similarity, directional_similarity_from_embeddings
    from .generation import DeltaErasure, Erasure, erased_denoiser, generate_images, initial_noise
    from .probe import ProbeResult, partial_diffusion_probe
    from .report import Report, ReportRow, build_report
    from .scorers import ClassifierScorer, ClipScorer, Scorer

__getattr__, __dir__ = _lazy.install(__name__, _EXPORTS)
