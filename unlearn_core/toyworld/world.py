"""The toy world as the metrics and attacks see it (README, "The toy world"): its model as a
denoiser, its judges as a scorer, and a quick erasure to measure. What ``unlearn probe`` and
``unlearn attack`` run by default, and what the tests and the benchmarks run on.

Toy images live in [-1, 1]; the metrics take [0, 1], so decoding is (x + 1) / 2 and the judges'
preprocess maps back with 2x - 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..denoiser import DiffusersDenoiser
from ..errors import ConfigError
from ..metrics.generation import signed_from_unit, unit_from_signed
from ..metrics.scorers import ClassifierScorer, JointClassifierScorer
from ..result import EraseResult
from .generation import DEFAULT_GUIDANCE

Tensor = torch.Tensor

TOY_GUIDANCE = DEFAULT_GUIDANCE  # the toy world's own sampling guidance (3.0)


@dataclass
class ToyWorld:
    """The toy model as the metrics see it."""

    model: object  # ToyModel
    denoiser: DiffusersDenoiser
    latent_shape: tuple[int, int, int] = (3, 16, 16)

    def encode(self, prompts: Sequence[str]) -> Tensor:
        """Prompts -> context (N, L, D)."""
        return self.model.encode(list(prompts))

    @staticmethod
    def decode(x: Tensor) -> Tensor:
        return unit_from_signed(x)

    def erase(self, concept: str, method: str = "uce", callback=None, **settings) -> EraseResult:
        """Erase ``concept`` with UCE (closed form, seconds) or the toy world's short-run SDD
        settings (``toyworld.erasure.TOY_SETTINGS``); ``settings`` override config fields,
        ``callback`` is the trainer's."""
        from .erasure import erase_toy, toy_config

        if method not in ("uce", "train"):
            raise ConfigError("method", method, "unknown erasure method", "use uce or train")
        return erase_toy(self.model, toy_config((concept,), method=method, **settings), callback)


def load_toy_world(path: str | None = None) -> ToyWorld:
    """The trained toy model (the committed asset unless ``path``), ready for the metrics."""
    from . import TOY_MODEL_FILE, load_toy_model
    from .erasure import toy_denoiser
    from .hashes import asset_path

    file = path if path is not None else asset_path(TOY_MODEL_FILE)
    if path is None and not asset_path(TOY_MODEL_FILE).is_file():
        raise ConfigError("model", str(file), "the toy world's model is missing",
                          "run scripts/train_toy_model.py, or give a model")
    model = load_toy_model(file)
    return ToyWorld(model=model, denoiser=toy_denoiser(model))


def toy_judge_scorer(path: str | None = None) -> JointClassifierScorer:
    """The toy judges as one scorer: the product of the shape, colour and texture judges'
    confidence in what the prompt names ("a blue square" -> P(square) * P(blue))."""
    from . import JUDGES_FILE, load_judges
    from .hashes import asset_path
    from .judges import JUDGE_CLASSES

    if path is None and not asset_path(JUDGES_FILE).is_file():
        raise ConfigError("scorer", "judge", "the toy world's judges are missing",
                          "run scripts/train_judges.py, or score with a CLIP model")
    judges = load_judges(path)
    # The shape judge's reject class ("none") is never named by a prompt.
    parts = tuple(ClassifierScorer(judges[axis], JUDGE_CLASSES[axis], signed_from_unit, name=f"{axis} judge")
                  for axis in ("shape", "colour", "texture"))
    return JointClassifierScorer(parts, name="judge confidence")
