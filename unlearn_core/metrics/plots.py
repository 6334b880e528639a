"""Plots for the reports, drawn with matplotlib's Agg backend and returned as image tensors.

Only the object-oriented API on a private ``Figure`` is used, so nothing touches pyplot's global
state or the user's backend. Images come back as (3, H, W) float32 in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

Tensor = torch.Tensor


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_to_tensor(fig) -> Tensor:
    """Render a matplotlib figure -> (3, H, W) in [0, 1]."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.float32)[..., :3] / 255.0
    return torch.from_numpy(rgba.copy()).permute(2, 0, 1).contiguous()


def _moving_average(values: Sequence[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(v) < window:
        return v
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


@dataclass(frozen=True)
class LossCurve:
    """What a loss plot shows, whoever draws it (the report with matplotlib, the Erase nodes'
    ``loss_plot`` with Pillow): the finite losses of steps 1..n, their moving average over
    ``window`` steps (for steps window..n), and whether the y axis is logarithmic (every value
    positive and spanning more than a factor of 20)."""

    values: list[float]
    mean: np.ndarray
    window: int
    log_scale: bool


def loss_curve(loss_history: Sequence[float]) -> LossCurve:
    values = [float(x) for x in loss_history if math.isfinite(float(x))]
    window = max(1, len(values) // 20)
    log_scale = bool(values) and min(values) > 0 and max(values) / min(values) > 20
    return LossCurve(values, _moving_average(values, window), window, log_scale)


def draw_loss(ax, loss_history: Sequence[float]) -> None:
    """Loss per step (faint) and its moving average (``loss_curve``)."""
    curve = loss_curve(loss_history)
    losses = curve.values
    ax.set_title("training loss")
    ax.set_xlabel("step")
    if not losses:
        ax.text(0.5, 0.5, "no loss history\n(closed-form edit, or a model\ngiven without its result)",
                ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="per step")
    window = curve.window
    if window > 1:
        ax.plot(steps[window - 1 :], curve.mean, color="tab:blue", lw=1.8,
                label=f"mean of {window}")
        ax.legend(fontsize=8)
    if curve.log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def draw_score_bars(ax, labels: Sequence[str], before: Sequence[float], after: Sequence[float],
                    kinds: Sequence[str], score_name: str) -> None:
    """Before/after bars per prompt; erased prompts on a red band, retained on a green one."""
    x = np.arange(len(labels))
    for i, kind in enumerate(kinds):
        ax.axvspan(i - 0.5, i + 0.5, color="tab:red" if kind == "erased" else "tab:green",
                   alpha=0.08, lw=0, zorder=0)
    ax.bar(x - 0.2, before, width=0.4, color="0.6", label="before", zorder=2)
    ax.bar(x + 0.2, after, width=0.4, color="tab:purple", label="after", zorder=2)
    short = [t if len(t) <= 22 else t[:21] + "…" for t in labels]
    ax.set_xticks(x, short, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(score_name)
    ax.set_title(f"{score_name} of each prompt, before and after\n"
                 "red band: erased (lower after is better); green: retained (unchanged is better)",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def report_plot(loss_history: Sequence[float], labels: Sequence[str], before: Sequence[float],
                after: Sequence[float], kinds: Sequence[str], score_name: str) -> Tensor:
    """The report's plot: loss curve | before/after scores. (3, H, W)."""
    fig = _figure(11, 4.2)
    ax_loss, ax_scores = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    draw_loss(ax_loss, loss_history)
    draw_score_bars(ax_scores, labels, before, after, kinds, score_name)
    fig.tight_layout()
    return figure_to_tensor(fig)


def probe_plot(psis: Sequence[float], presence: Tensor, concept: str, score_name: str,
               ccs: float, erased_level: float | None = None, base_level: float | None = None
               ) -> Tensor:
    """The probe's curve: mean presence over seeds against psi, ± its standard error. (3, H, W).

    ``presence``: (P, B). Dashed lines mark the erased model alone (psi = 0) and the base model
    alone (psi = 1).
    """
    order = np.argsort(np.asarray(psis))
    x = np.asarray(psis, dtype=np.float64)[order]
    p = presence.double().numpy()[order]  # (P, B)
    mean = p.mean(1)
    fig = _figure(6, 4)
    ax = fig.subplots()
    if p.shape[1] > 1:
        sem = p.std(1, ddof=1) / np.sqrt(p.shape[1])
        ax.fill_between(x, mean - sem, mean + sem, color="tab:orange", alpha=0.25, lw=0,
                        label=f"± standard error over {p.shape[1]} seeds")
    ax.plot(x, mean, "o-", color="tab:orange", label="mean over seeds")
    if erased_level is not None:
        ax.axhline(erased_level, color="tab:green", ls="--", lw=1, label="erased model alone (ψ=0)")
    if base_level is not None:
        ax.axhline(base_level, color="tab:red", ls="--", lw=1, label="base model alone (ψ=1)")
    ax.set_xlabel("ψ: share of the trajectory denoised by the base model")
    ax.set_ylabel(f"{score_name} of {concept!r}")
    ax.set_title(f"partial-diffusion probe: CCS = {ccs:.3g} (lower is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_to_tensor(fig)
