"""Text conditioning handed to the engine: embeddings, not strings (encoding lives at the edges)."""

from __future__ import annotations

import math
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


@dataclass
class EncodedRows:
    """Conditioning a front end already has as embeddings (ComfyUI's CONDITIONING inputs), each a
    list of (1, L, D) rows; a field left ``None`` is encoded from the config's text.

    ``concepts``: one row per concept (their text lines are then only labels). ``anchor``: exactly
    one row, what the concepts are mapped to -- for training it replaces the empty prompt (the
    target and the sampler's negative), for UCE it is the guide. ``retain``: retain prompts.
    """

    concepts: list[Tensor] | None = None
    anchor: list[Tensor] | None = None
    retain: list[Tensor] | None = None


def common_length(embs: Sequence[Tensor]) -> list[Tensor]:
    """Repeat each (1, L, D) embedding along L to the lowest common multiple of the lengths.

    Attention over a repeated key/value sequence equals attention over one copy (softmax weights
    split evenly between the copies), so prompts of different token lengths (77, 154, ...) can
    share a batch without changing any prediction.
    """
    lengths = {int(e.shape[1]) for e in embs}
    if len(lengths) <= 1:
        return list(embs)
    target = math.lcm(*lengths)
    return [e if e.shape[1] == target else e.repeat(1, target // e.shape[1], 1) for e in embs]


class _Texts:
    """Every text one erasure encodes, in one list (one ``encode`` call), with where each part
    (concepts, trajectory, empty, retain, guide, contexts) starts."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.at: dict[str, int] = {}
        self.emb: Tensor | None = None
        self.last: list[int] | None = None

    def add(self, part: str, items: Sequence[str]) -> None:
        self.at[part] = len(self.texts)
        self.texts.extend(items)

    def encode(self, encode: Callable[[Sequence[str]], Tensor],
               last_token: Callable[[Sequence[str]], list[int]] | None) -> None:
        self.emb = encode(self.texts) if self.texts else None
        if last_token is not None and self.texts:
            self.last = list(last_token(self.texts))

    def take(self, part: str, n: int) -> list[Tensor]:
        """The part's first ``n`` embeddings, each (1, L, D)."""
        return [self.emb[self.at[part] + i : self.at[part] + i + 1] for i in range(n)]

    def last_of(self, part: str, n: int) -> list[int] | None:
        return None if self.last is None else self.last[self.at[part] : self.at[part] + n]

    def context_rows(self, pairs: list[list[tuple[str, str]]]) -> list[list[tuple[Tensor, Tensor]]]:
        """Each concept's (prompt, anchor) context pairs as embeddings."""
        out, i = [], self.at["contexts"]
        for ps in pairs:
            out.append([(self.emb[i + 2 * j : i + 2 * j + 1], self.emb[i + 2 * j + 1 : i + 2 * j + 2])
                        for j in range(len(ps))])
            i += 2 * len(ps)
        return out


def _check_rows(rows: EncodedRows, config: EraseConfig,
                count_tokens: Callable[[str], int] | None) -> None:
    """Refuse an anchor of several rows or beside a guide text, and (with ``count_tokens``) any
    config text too long for the text encoder, before anything is encoded."""
    from .prompts import check_config_prompts

    if rows.anchor is not None and len(rows.anchor) != 1:
        raise ConfigError("anchor_conditioning", f"{len(rows.anchor)} entries",
                          "needs exactly one prompt", "connect a single CLIP Text Encode")
    if rows.anchor is not None and config.uce_guide:
        raise ConfigError("uce_guide", config.uce_guide,
                          "both uce_guide text and anchor_conditioning are given",
                          "clear uce_guide or disconnect anchor_conditioning")
    given = [name for name, r in (("concepts", rows.concepts), ("retain_prompts", rows.retain),
                                  ("uce_guide", rows.anchor)) if r is not None]
    if count_tokens is not None:
        check_config_prompts(config, count_tokens, skip=given)


def _texts_to_encode(config: EraseConfig, rows: EncodedRows,
                     count_tokens: Callable[[str], int] | None,
                     context_pairs: ContextPairs | None
                     ) -> tuple[_Texts, list[list[tuple[str, str]]], bool]:
    """(the texts, each concept's context pairs, whether a guide text is encoded): every text
    the erasure needs that ``rows`` does not already give."""
    from .prompts import check_prompt_lengths, trajectory_prompt

    training = config.method == "train"
    concepts = list(config.concepts)
    texts = _Texts()
    if rows.concepts is None:
        texts.add("concepts", concepts)
        if training:  # SDD samples its training states from the concepts' joint prompt
            texts.add("trajectory", [trajectory_prompt(concepts, count_tokens)])
    if rows.anchor is None:
        texts.add("empty", [""])
    if rows.retain is None:
        texts.add("retain", config.retain_prompts)
    guide_text = config.method == "uce" and bool(config.uce_guide) and rows.anchor is None
    if guide_text:
        texts.add("guide", [config.uce_guide])
    if config.contexts:
        pairs_of = template_pairs(config.contexts)
    else:
        pairs_of = context_pairs or template_pairs(DEFAULT_CONTEXTS)
    pairs = ([list(pairs_of(c)) for c in concepts] if training and rows.concepts is None
             else [[] for _ in concepts])
    flat = [text for ps in pairs for pair in ps for text in pair]
    if count_tokens is not None and flat:
        check_prompt_lengths({"contexts": flat}, count_tokens)
    texts.add("contexts", flat)
    return texts, pairs, guide_text


def _one_length(concepts: list[Tensor], trajectory: Tensor, empty: Tensor, retain: list[Tensor],
                contexts: list[list[tuple[Tensor, Tensor]]]) -> tuple:
    """Training's rows brought to one token length (``common_length``), so they share batches:
    (concepts, trajectory, empty, retain, contexts)."""
    k = len(concepts)
    n_ctx = [len(ps) for ps in contexts]
    flat_ctx = [e for ps in contexts for pair in ps for e in pair]
    same = common_length([*concepts, trajectory, empty, *retain, *flat_ctx])
    rest = iter(same[k + 2 + len(retain):])
    contexts = [[(next(rest), next(rest)) for _ in range(n)] for n in n_ctx]
    return same[:k], same[k], same[k + 1], same[k + 2 : k + 2 + len(retain)], contexts


def encode_conditioning(encode: Callable[[Sequence[str]], Tensor], config: EraseConfig,
                        last_token: Callable[[Sequence[str]], list[int]] | None = None,
                        count_tokens: Callable[[str], int] | None = None,
                        context_pairs: ContextPairs | None = None,
                        rows: EncodedRows | None = None) -> Conditioning:
    """The conditioning of one erasure, for every front end (CLI, ComfyUI nodes, toy world).

    Texts go through ``encode(list of str) -> (N, L, D)`` in one call; ``rows`` (see
    ``EncodedRows``) stand in for the texts a front end already encoded.
    ``last_token(texts)`` gives each text's last real token index (UCE needs it).
    ``count_tokens(text)`` (text tokens, without start/end), where given, applies the prompt-length
    rule of ``unlearn_core.prompts``: a text longer than the text encoder reads is refused
    (ConfigError) before anything is encoded.
    ``context_pairs(concept)`` gives the (prompt, anchor) pairs a concept is erased inside when
    ``config.contexts`` is empty (a front end that knows its captions, e.g. the toy world);
    without it, ``DEFAULT_CONTEXTS``. Templates in ``config.contexts`` always win. Concepts given
    as rows have no text to put in a caption: they train without contexts.
    Training brings every row to one token length (``common_length``) so they share batches.
    """
    rows = rows or EncodedRows()
    _check_rows(rows, config, count_tokens)
    training = config.method == "train"
    k = len(config.concepts)
    texts, pairs, guide_text = _texts_to_encode(config, rows, count_tokens, context_pairs)
    texts.encode(encode, last_token)

    if rows.concepts is None:
        concept_rows, concept_last = texts.take("concepts", k), texts.last_of("concepts", k)
        trajectory = texts.take("trajectory", 1)[0] if training else None
    else:
        concept_rows, concept_last = list(rows.concepts), None
        # as ComfyUI's "Conditioning (Concat)": one prompt holding every concept
        trajectory = torch.cat(rows.concepts, dim=1) if training else None
    if rows.anchor is None:
        empty, empty_last = texts.take("empty", 1)[0], texts.last_of("empty", 1)
    else:
        empty, empty_last = rows.anchor[0], None
    if rows.retain is None:
        n_ret = len(config.retain_prompts)
        retain, retain_last = texts.take("retain", n_ret), texts.last_of("retain", n_ret)
    else:
        retain, retain_last = list(rows.retain), None
    if guide_text:
        guide, guide_last = texts.take("guide", 1)[0], texts.last_of("guide", 1)
    else:
        guide, guide_last = (rows.anchor[0] if rows.anchor is not None else None), empty_last
    contexts = texts.context_rows(pairs)

    if training:  # one token length for all, so prompts can share a batch
        concept_rows, trajectory, empty, retain, contexts = _one_length(
            concept_rows, trajectory, empty, retain, contexts)
    guide_at = guide_last[0] if guide_last else None
    if concept_last is not None and (guide_at is None or None in concept_last):
        concept_last = None  # positions unknown on one side: UCE aligns all tokens
    return Conditioning(
        concepts=concept_rows, empty=empty, trajectory=trajectory, retain=retain, guide=guide,
        contexts=contexts, concept_last_token=concept_last,
        retain_last_token=None if retain_last is None or None in retain_last else retain_last,
        guide_last_token=guide_at or 0,
    )
