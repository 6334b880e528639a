"""The before/after report: did the erasure work, and what did it cost?

For erased prompts and retained prompts, the base model ("before") and the erased model ("after")
generate one image per (prompt, seed) from the same starting noise (common random numbers); a
scorer measures how much each image shows its own prompt (CLIP score, or a judge's confidence).
On erased prompts a lower score after is better (efficacy); on retained prompts an unchanged
score is better (retention, reported as after / before). Returned as data (scores per image),
images (a labelled grid: rows = prompts, columns = seeds, before | after; a plot: the training
loss and the scores), and a markdown and JSON summary.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..denoiser import Denoiser
from ..errors import Cancelled, ConfigError
from .config import ReportConfig
from .generation import Decode, Erasure, erased_denoiser, generate_images, initial_noise
from .images import labelled_grid, save_png
from .plots import report_plot
from .scorers import Scorer

Tensor = torch.Tensor
Encode = Callable[[Sequence[str]], Tensor]  # prompts -> embeddings (N, L, D)
Progress = Callable[[int, int], "bool | None"]  # (images done, total); return True to cancel

ERASED, RETAINED = "erased", "retained"


@dataclass(frozen=True)
class ReportRow:
    """One prompt's scores, per seed, before and after."""

    prompt: str
    kind: str  # "erased" or "retained"
    before: tuple[float, ...]
    after: tuple[float, ...]

    @property
    def mean_before(self) -> float:
        return sum(self.before) / len(self.before)

    @property
    def mean_after(self) -> float:
        return sum(self.after) / len(self.after)

    @property
    def change(self) -> float:
        return self.mean_after - self.mean_before


def _group_summary(rows: Sequence[ReportRow]) -> dict[str, float] | None:
    if not rows:
        return None
    before = [v for r in rows for v in r.before]
    after = [v for r in rows for v in r.after]
    mb, ma = sum(before) / len(before), sum(after) / len(after)
    return {"before": mb, "after": ma, "change": ma - mb,
            "after_over_before": ma / mb if mb > 0 else math.nan, "images": len(after)}


@dataclass
class Report:
    """Everything the report shows. ``grid``/``plot``: (3, H, W) in [0, 1]; ``images_before``/
    ``images_after``: (P, S, 3, H, W) for P prompts (erased first) and S seeds."""

    rows: list[ReportRow]
    seeds: tuple[int, ...]
    score_name: str
    grid: Tensor
    plot: Tensor
    images_before: Tensor
    images_after: Tensor
    loss_history: list[float] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    title: str = "Erasure report"

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "score": self.score_name,
            "seeds": list(self.seeds),
            ERASED: _group_summary([r for r in self.rows if r.kind == ERASED]),
            RETAINED: _group_summary([r for r in self.rows if r.kind == RETAINED]),
            "final_loss": self.loss_history[-1] if self.loss_history else None,
            "steps": len(self.loss_history),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "rows": [{"prompt": r.prompt, "kind": r.kind, "before": list(r.before),
                      "after": list(r.after), "mean_before": r.mean_before,
                      "mean_after": r.mean_after, "change": r.change} for r in self.rows],
            "loss_history": list(self.loss_history),
            "config": self.config,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def markdown(self, grid_file: str | None = None, plot_file: str | None = None) -> str:
        s = self.summary
        lines = [f"## {self.title}", ""]
        er, re_ = s[ERASED], s[RETAINED]
        if er:
            lines.append(f"- **Erased prompts** ({self.score_name}, lower after is better): "
                         f"{er['before']:.4g} → {er['after']:.4g} ({er['change']:+.4g})")
        if re_:
            lines.append(f"- **Retained prompts** ({self.score_name}, unchanged is better): "
                         f"{re_['before']:.4g} → {re_['after']:.4g} ({re_['change']:+.4g}; "
                         f"after/before {re_['after_over_before']:.3f})")
        if self.loss_history:
            lines.append(f"- Training: {len(self.loss_history)} steps, final loss "
                         f"{self.loss_history[-1]:.4g}")
        lines.append(f"- Seeds: {', '.join(map(str, self.seeds))}; one image per prompt and seed, "
                     "same starting noise before and after")
        lines += ["", f"| prompt | kind | {self.score_name} before | after | change |",
                  "|---|---|---:|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r.prompt} | {r.kind} | {r.mean_before:.4g} | {r.mean_after:.4g} | "
                         f"{r.change:+.4g} |")
        if grid_file:
            lines += ["", f"![before | after]({grid_file})"]
        if plot_file:
            lines += ["", f"![loss and scores]({plot_file})"]
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path, stem: str = "report") -> dict[str, Path]:
        """Write ``{stem}_grid.png``, ``{stem}_plot.png``, ``{stem}.md``, ``{stem}.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"grid": save_png(self.grid, d / f"{stem}_grid.png"),
                 "plot": save_png(self.plot, d / f"{stem}_plot.png")}
        paths["markdown"] = d / f"{stem}.md"
        paths["markdown"].write_text(self.markdown(paths["grid"].name, paths["plot"].name))
        paths["json"] = d / f"{stem}.json"
        paths["json"].write_text(self.to_json())
        return paths


@torch.no_grad()
def build_report(
    base: Denoiser,
    erased: Denoiser | Erasure,
    encode: Encode,
    decode: Decode,
    latent_shape: Sequence[int],
    scorer: Scorer,
    config: ReportConfig,
    loss_history: Sequence[float] | None = None,
    title: str = "Erasure report",
    on_progress: Progress | None = None,
) -> Report:
    """Generate before/after images for every (prompt, seed), score them, lay out the report.

    ``encode(prompts) -> (N, L, D)``; ``decode``: final latents -> images (B, 3, H, W) in [0, 1];
    ``latent_shape`` (C, h, w) of the starting noise. ``loss_history`` defaults to the erasure's
    own (``EraseResult.loss_history``) when ``erased`` is one.
    """
    prompts = list(config.erased_prompts) + list(config.retained_prompts)
    kinds = [ERASED] * len(config.erased_prompts) + [RETAINED] * len(config.retained_prompts)
    n_p, n_s = len(prompts), len(config.seeds)
    if loss_history is None:
        loss_history = list(getattr(erased, "loss_history", []) or [])
    emb = encode(prompts + [""])  # (P + 1, L, D)
    if emb.dim() != 3 or emb.shape[0] != n_p + 1:
        raise ConfigError("encode", tuple(emb.shape), f"the text encoder returned the wrong shape "
                          f"for {n_p + 1} prompts", "encode must map N prompts to (N, L, D)")
    cond = emb[:n_p].repeat_interleave(n_s, 0)  # (P*S, L, D), prompt-major
    uncond = emb[n_p:]
    x_T = initial_noise(config.seeds, latent_shape).repeat(n_p, 1, 1, 1)  # (P*S, C, h, w)

    total = 2 * n_p * n_s
    done = 0

    def run(model: Denoiser) -> Tensor:
        nonlocal done
        chunks = []
        for i in range(0, n_p * n_s, config.batch_size):
            sl = slice(i, i + config.batch_size)
            chunks.append(generate_images(model, x_T[sl], cond[sl], uncond, decode, config.guidance,
                                          config.sampling_steps, config.batch_size))
            done += chunks[-1].shape[0]
            if on_progress is not None and on_progress(done, total):
                raise Cancelled("the report was cancelled")
        return torch.cat(chunks)

    before = run(base)
    with erased_denoiser(base, erased, config.strength) as model:
        after = run(model)
    flat_prompts = [p for p in prompts for _ in range(n_s)]
    s_before = scorer(before, flat_prompts).float().cpu().view(n_p, n_s)
    s_after = scorer(after, flat_prompts).float().cpu().view(n_p, n_s)
    rows = [ReportRow(p, k, tuple(map(float, b)), tuple(map(float, a)))
            for p, k, b, a in zip(prompts, kinds, s_before, s_after)]

    images_before = before.view(n_p, n_s, *before.shape[1:])
    images_after = after.view(n_p, n_s, *after.shape[1:])
    score_name = getattr(scorer, "name", "score")
    labels = [f"{k}: {p}" for p, k in zip(prompts, kinds)]
    grid = labelled_grid([("before", images_before), ("after", images_after)], labels,
                         [f"seed {s}" for s in config.seeds])
    plot = report_plot(loss_history, prompts, [r.mean_before for r in rows],
                       [r.mean_after for r in rows], kinds, score_name)
    return Report(rows=rows, seeds=tuple(config.seeds), score_name=score_name, grid=grid, plot=plot,
                  images_before=images_before, images_after=images_after,
                  loss_history=[float(x) for x in loss_history], config=config.to_dict(),
                  title=title)
