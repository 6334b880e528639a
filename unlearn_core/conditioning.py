"""Text conditioning handed to the engine: embeddings, not strings (encoding lives at the edges)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .config import EraseConfig
from .errors import ConfigError, ModelError

Tensor = torch.Tensor


@dataclass
class Conditioning:
    """Embeddings (1, L, D) each.

    ``concepts``: one per concept, taken in turn. ``empty``: the empty prompt. ``trajectory``: the
    prompt whose guided trajectory yields the training states (SDD: the concepts joined by ", ").
    ``retain``: prompts held to the base model. ``guide``: UCE's target (default ``empty``).
    ``contexts``: per concept, (prompt, anchor) pairs: the concept inside a longer prompt, and
    the same prompt without it; the prompt's prediction is pulled to the anchor's (the bare
    concept's anchor is ``empty``). Empty lists, or none given: the bare concept only.
    """

    concepts: list[Tensor]
    empty: Tensor
    trajectory: Tensor | None = None
    retain: list[Tensor] = field(default_factory=list)
    guide: Tensor | None = None
    contexts: list[list[tuple[Tensor, Tensor]]] = field(default_factory=list)
    # Index of each prompt's last real token (after BOS), for UCE; None = unknown (UCE then uses
    # every position).
    concept_last_token: list[int] | None = None
    retain_last_token: list[int] | None = None
    guide_last_token: int = 0

    def check(self, context_dim: int | None = None) -> None:
        if not self.concepts:
            raise ConfigError("concepts", [], "no concept embedding given", "give one or more")
        extra = [("trajectory", self.trajectory), ("uce_guide", self.guide)]
        for name, emb in [("empty", self.empty)] + [("concepts", c) for c in self.concepts] + [
            ("retain_prompts", r) for r in self.retain
        ] + [(n, e) for n, e in extra if e is not None] + [
            ("contexts", e) for pairs in self.contexts for pair in pairs for e in pair
        ]:
            if not isinstance(emb, Tensor) or not emb.is_floating_point():
                raise ModelError(f"{name} conditioning must be a float tensor (1, L, D), got "
                                 f"{type(emb).__name__}. Fix: pass the text encoder's output.")
            if emb.dim() != 3 or emb.shape[0] != 1:
                raise ModelError(f"{name} conditioning must have shape (1, L, D), got "
                                 f"{tuple(emb.shape)}")
            if not torch.isfinite(emb).all():
                raise ModelError(f"{name} conditioning holds NaN or infinite values. Fix: check "
                                 "the text encoder (or the CONDITIONING connected) and its dtype.")
            if context_dim is not None and emb.shape[-1] != context_dim:
                raise ModelError(
                    f"{name} conditioning has width {emb.shape[-1]} but the model's "
                    f"cross-attention expects {context_dim}: encode the prompts with the text "
                    "encoder that belongs to this model (SD-1.x: CLIP ViT-L/14, 768)."
                )

    def to(self, device: torch.device, dtype: torch.dtype) -> Conditioning:
        def mv(t: Tensor | None) -> Tensor | None:
            # clone: tensors from a host (ComfyUI) may be inference tensors autograd refuses
            return None if t is None else t.detach().to(device=device, dtype=dtype).clone()

        return Conditioning(
            concepts=[mv(c) for c in self.concepts], empty=mv(self.empty),
            trajectory=mv(self.trajectory), retain=[mv(r) for r in self.retain],
            guide=mv(self.guide),
            contexts=[[(mv(p), mv(a)) for p, a in pairs] for pairs in self.contexts],
            concept_last_token=self.concept_last_token,
            retain_last_token=self.retain_last_token, guide_last_token=self.guide_last_token,
        )


ContextPairs = Callable[[str], Sequence[tuple[str, str]]]

# Contexts for a concept on SD-1.x when the config names none: a few generic captions, so that the
# concept is erased inside captions and not only alone (measured on the toy world with its own
# captions, BENCHMARKS.md; on SD these templates are a choice, not a measurement).
DEFAULT_CONTEXTS: tuple[str, ...] = ("a photo of {}", "a painting of {}",
                                     "an image of {}, detailed")


def template_pairs(templates: Sequence[str]) -> ContextPairs:
    """(prompt, anchor) pairs from templates with one {}: the concept in the slot, and the
    template with the slot left empty (spaces and a dangling comma tidied)."""

    def pairs(concept: str) -> list[tuple[str, str]]:
        out = []
        for template in templates:
            anchor = " ".join(template.replace("{}", " ").split())
            anchor = anchor.replace(" ,", ",").strip(" ,")
            out.append((template.replace("{}", concept), anchor))
        return out

    return pairs


def encode_conditioning(encode: Callable[[Sequence[str]], Tensor], config: EraseConfig,
                        last_token: Callable[[Sequence[str]], list[int]] | None = None,
                        count_tokens: Callable[[str], int] | None = None,
                        context_pairs: ContextPairs | None = None) -> Conditioning:
    """Build the conditioning from text with ``encode(list of str) -> (N, L, D)``.

    ``last_token(texts)`` gives each text's last real token index (UCE needs it).
    ``count_tokens(text)`` (text tokens, without start/end), where given, applies the prompt-length
    rule of ``unlearn_core.prompts``: a text longer than the text encoder reads is refused
    (ConfigError) before anything is encoded.
    ``context_pairs(concept)`` gives the (prompt, anchor) pairs a concept is erased inside when
    ``config.contexts`` is empty (a front end that knows its captions, e.g. the toy world);
    without it, ``DEFAULT_CONTEXTS``. Templates in ``config.contexts`` always win.
    """
    from .prompts import check_config_prompts, trajectory_prompt

    if count_tokens is not None:
        check_config_prompts(config, count_tokens)
    concepts = list(config.concepts)
    training = config.method == "train"  # only training samples from the joint prompt
    trajectory = trajectory_prompt(concepts, count_tokens if training else None)
    texts = concepts + ["", trajectory] + list(config.retain_prompts)
    if config.uce_guide:
        texts.append(config.uce_guide)
    if config.contexts:
        pairs_of = template_pairs(config.contexts)
    else:
        pairs_of = context_pairs or template_pairs(DEFAULT_CONTEXTS)
    pairs = [list(pairs_of(c)) if training else [] for c in concepts]
    flat = [text for ps in pairs for pair in ps for text in pair]
    if count_tokens is not None:
        from .prompts import check_prompt_lengths

        check_prompt_lengths({"contexts": flat}, count_tokens)
    emb = encode(texts + flat) if flat else encode(texts)
    n_base = len(texts)
    contexts, at = [], n_base
    for ps in pairs:
        contexts.append([(emb[at + 2 * j : at + 2 * j + 1], emb[at + 2 * j + 1 : at + 2 * j + 2])
                         for j in range(len(ps))])
        at += 2 * len(ps)
    emb = emb[:n_base]
    k = len(concepts)
    n_ret = len(config.retain_prompts)
    last = list(last_token(texts)) if last_token is not None else None
    return Conditioning(
        concept_last_token=last[:k] if last else None,
        retain_last_token=last[k + 2 : k + 2 + n_ret] if last else None,
        guide_last_token=(last[-1] if config.uce_guide else last[k]) if last else 0,
        concepts=[emb[i : i + 1] for i in range(k)],
        empty=emb[k : k + 1],
        trajectory=emb[k + 1 : k + 2],
        retain=[emb[k + 2 + i : k + 3 + i] for i in range(n_ret)],
        guide=emb[-1:] if config.uce_guide else None,
        contexts=contexts,
    )
