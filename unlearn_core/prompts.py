"""One rule for prompt length, the same on the CLI and in ComfyUI.

SD-1's text encoder (CLIP ViT-L/14) reads 77 tokens: a start token, at most 75 tokens of text and
an end token. The two front ends used to disagree past that: the CLI's tokenizer cut the text at
77 tokens without a word, and ComfyUI encodes long text in 77-token chunks, so a pasted essay
trained for minutes per step. Either way the user did not learn what was erased.

The rule: every text the user gives -- each concept, each retain prompt, the UCE guide -- must fit
in 75 tokens, or the erasure is refused before any model is loaded, with the token count, the
limit and the line. A concept is a name or a short phrase; longer text is a mistake, and cutting
it would erase something other than what was asked.

The one text Unlearn builds itself, the prompt whose trajectories give the training states (the
concepts joined by ", "), may outgrow the limit when many concepts are erased at once; it then
holds the whole concepts that fit, the rest are named in a warning (each concept is still
erased: training takes the concepts in turn; only the sampled states come from fewer of them).

The front ends count tokens with their own tokenizer (the same CLIP BPE): ``count_tokens(text)``
returns the number of text tokens, without the start and end tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from .config import EraseConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

CONTEXT_TOKENS = 77  # CLIP's context: start + text + end
MAX_PROMPT_TOKENS = CONTEXT_TOKENS - 2

TokenCounter = Callable[[str], int]

_FIXES = {
    "concepts": "shorten it to at most {limit} tokens: name the concept (e.g. 'Van Gogh', "
                "'a photo of a dog'), not a whole scene",
    "retain_prompts": "shorten it to at most {limit} tokens, or split it into several shorter "
                      "retain prompts (one per line)",
}
_LOST = {
    "concepts": "the rest would be cut off and not erased",
    "retain_prompts": "the rest would be cut off and not held",
}


def prompt_texts(config: EraseConfig, skip: Sequence[str] = ()) -> dict[str, tuple[str, ...]]:
    """The texts of ``config`` that get encoded, by field (``skip``: fields given as embeddings)."""
    texts: dict[str, tuple[str, ...]] = {"concepts": config.concepts,
                                         "retain_prompts": config.retain_prompts}
    if config.method == "uce" and config.uce_guide:
        texts["uce_guide"] = (config.uce_guide,)
    return {k: v for k, v in texts.items() if k not in skip}


def _preview(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def check_prompt_lengths(texts: Mapping[str, Sequence[str]], count_tokens: TokenCounter) -> None:
    """ConfigError naming the field, the line, its token count and the limit for the first text
    longer than ``MAX_PROMPT_TOKENS`` tokens."""
    for field, lines in texts.items():
        for i, text in enumerate(lines):
            n = int(count_tokens(text))
            if n <= MAX_PROMPT_TOKENS:
                continue
            where = f"line {i + 1} is" if len(lines) > 1 else "it is"
            lost = _LOST.get(field, "the rest would be cut off")
            fix = _FIXES.get(field, "shorten it to at most {limit} tokens")
            raise ConfigError(
                field, _preview(text),
                f"{where} {n} tokens long; SD-1's text encoder reads at most {MAX_PROMPT_TOKENS} "
                f"tokens ({CONTEXT_TOKENS} with its start and end tokens), so {lost}",
                fix.format(limit=MAX_PROMPT_TOKENS))


def check_config_prompts(config: EraseConfig, count_tokens: TokenCounter,
                         skip: Sequence[str] = ()) -> None:
    """``check_prompt_lengths`` on every text of ``config`` that gets encoded."""
    check_prompt_lengths(prompt_texts(config, skip), count_tokens)


def trajectory_prompt(concepts: Sequence[str], count_tokens: TokenCounter | None = None) -> str:
    """The prompt whose guided trajectories give the training states: the concepts joined by
    ", " -- as many whole concepts as fit in ``MAX_PROMPT_TOKENS`` when ``count_tokens`` is
    given (the others are named in a warning). Without a counter, all of them."""
    joined = ", ".join(concepts)
    if count_tokens is None or len(concepts) < 2 or count_tokens(joined) <= MAX_PROMPT_TOKENS:
        return joined
    kept = [concepts[0]]
    for concept in concepts[1:]:
        if count_tokens(", ".join([*kept, concept])) > MAX_PROMPT_TOKENS:
            break
        kept.append(concept)
    dropped = list(concepts[len(kept):])
    log.warning(
        "Unlearn: the %d concepts joined are %d tokens, more than the %d SD-1's text encoder "
        "reads; the training states are sampled from the first %d (%s). All %d are still erased "
        "(training takes them in turn), but %s are never in the sampled prompt; erase them in a "
        "separate run if they come back.", len(concepts), count_tokens(joined), MAX_PROMPT_TOKENS,
        len(kept), ", ".join(kept), len(concepts), ", ".join(repr(c) for c in dropped))
    return ", ".join(kept)
