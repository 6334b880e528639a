"""UCE: closed-form edit of cross-attention keys and values (Gandikota et al. 2024, "Unified
Concept Editing in Diffusion Models", https://arxiv.org/abs/2308.14761).

For each cross-attention projection W (to_k, to_v; shape (out, d)):

    W_new = (lam W + s_e sum_i W c*_i c_i^T + s_p sum_j W c_j c_j^T)
            (lam I + s_e sum_i c_i c_i^T + s_p sum_j c_j c_j^T)^-1

c_i are text-embedding vectors of the concepts, c*_i the guide's vectors they should map to (the
empty prompt by default), c_j those of the prompts to preserve. As the reference code, ``last``
takes each prompt's positions from its last real token to the end of the sequence (the EOS and
padding positions carry the whole prompt in a causal text encoder), aligned with the guide's
positions from its last real token; ``all`` starts at the first real token. Solved in float64;
the result is a full delta per layer, so files, Apply Erasure and the reports work unchanged.
"""

from __future__ import annotations

import time

import torch

from .conditioning import Conditioning
from .config import EraseConfig
from .delta import Delta
from .denoiser import Denoiser
from .errors import ConfigError, ModelError, TrainingError
from .result import EraseResult, base_metadata, weights_hash
from .selection import select_layers

Tensor = torch.Tensor


def _positions(emb: Tensor, last: int | None, mode: str) -> Tensor:
    """Rows of a (1, L, D) embedding UCE uses, (n, D)."""
    seq = emb[0]
    if last is None or mode == "all":
        start = 1 if seq.shape[0] > 1 else 0
    else:
        start = last
    return seq[start:]


def _aligned(concept: Tensor, c_last: int | None, guide: Tensor, g_last: int | None,
             mode: str) -> tuple[Tensor, Tensor]:
    c = _positions(concept, c_last, mode)
    g = _positions(guide, g_last, mode)
    n = min(len(c), len(g))
    return c[:n], g[:n]


def uce_edit(weights: dict[str, Tensor], concepts: list[Tensor], guides: list[Tensor],
             preserves: list[Tensor], lam: float, erase_scale: float, preserve_scale: float
             ) -> tuple[dict[str, Tensor], float]:
    """Closed-form new weights. ``concepts``/``guides``: aligned (n_i, d) rows; ``preserves``:
    (m_j, d) rows. Returns float64 new weights per layer and the condition number of the system."""
    if lam <= 0:
        raise ConfigError("uce_lambda", lam, "must be > 0 (it keeps the system solvable)",
                          "use 0.5 (the reference value)")
    first = next(iter(weights.values()))
    d = first.shape[1]
    c = torch.cat(concepts).double() if concepts else torch.zeros(0, d, dtype=torch.float64)
    g = torch.cat(guides).double() if guides else torch.zeros(0, d, dtype=torch.float64)
    p = torch.cat(preserves).double() if preserves else torch.zeros(0, d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    rhs_inv = lam * eye + erase_scale * c.T @ c + preserve_scale * p.T @ p  # (d, d), symmetric
    cond = float(torch.linalg.cond(rhs_inv))
    if not torch.isfinite(torch.tensor(cond)) or cond > 1e14:
        raise TrainingError(f"the UCE system is singular (condition number {cond:.3g}). Fix: raise "
                            "uce_lambda or remove repeated prompts.")
    out = {}
    for name, w in weights.items():
        w = w.double().cpu()
        lhs = lam * w + erase_scale * (w @ g.T) @ c + preserve_scale * (w @ p.T) @ p  # (out, d)
        new = torch.linalg.solve(rhs_inv, lhs.T).T  # lhs @ rhs_inv^-1 (rhs_inv symmetric)
        if not torch.isfinite(new).all():
            raise TrainingError(f"UCE produced non-finite weights for {name}; nothing was written")
        out[name] = new
    return out, cond


def uce_erase(denoiser: Denoiser, conditioning: Conditioning, config: EraseConfig) -> EraseResult:
    """UCE over every cross-attention to_k/to_v of ``denoiser``; same result type as training."""
    start = time.perf_counter()
    if len(conditioning.concepts) != len(config.concepts):
        raise ConfigError("concepts", config.concepts, "concept embeddings and concepts differ in "
                          "number", "encode every concept once")
    layers = select_layers(denoiser.module, "xattn-kv")
    widths = {m.weight.shape[1] for m in layers.values()}
    ctx = conditioning.concepts[0].shape[-1]
    if widths != {ctx}:
        raise ModelError(f"the text embeddings are {ctx} wide but the cross-attention layers take "
                         f"{sorted(widths)}: encode with this model's text encoder")
    guide = conditioning.guide if conditioning.guide is not None else conditioning.empty
    mode = config.uce_token
    c_last = conditioning.concept_last_token or [None] * len(conditioning.concepts)
    g_last = conditioning.guide_last_token if conditioning.concept_last_token else None
    concepts, guides = [], []
    for emb, last in zip(conditioning.concepts, c_last):
        c, g = _aligned(emb.detach().cpu(), last, guide.detach().cpu(), g_last, mode)
        concepts.append(c)
        guides.append(g)
    r_last = conditioning.retain_last_token or [None] * len(conditioning.retain)
    preserves = [_positions(r.detach().cpu(), last, mode)
                 for r, last in zip(conditioning.retain, r_last)]
    base = {n: m.weight.detach() for n, m in layers.items()}
    new, cond = uce_edit(base, concepts, guides, preserves, config.uce_lambda,
                         config.uce_erase_scale, config.uce_preserve_scale)
    deltas = {denoiser.canonical_name(n): Delta(diff=(new[n] - base[n].double().cpu()).float())
              for n in layers}
    meta = base_metadata(config, weights_hash(denoiser.module, layers), {
        "method": "uce", "condition_number": cond, "layers": len(deltas),
        "seconds": round(time.perf_counter() - start, 3), "unet_evals_nograd": 0,
        "unet_evals_grad": 0,
    })
    return EraseResult(deltas=deltas, config=config, loss_history=[], metadata=meta)
