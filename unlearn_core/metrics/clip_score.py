"""CLIP score (Hessel et al. 2021, "CLIPScore", https://arxiv.org/abs/2104.08718) with an open_clip
model loaded from a local file.

    CLIP score(image, text) = 100 * max(cos(E_img(image), E_txt(text)), 0)

(Hessel et al. scale by w = 2.5; torchmetrics and the concept-erasure literature, e.g. "Towards
robust concept erasure in diffusion models", report 100 * max(cos, 0), which is what this module
computes.) Higher means the image shows the text more; on erased prompts lower is better, on
retained prompts unchanged is better.

Loading never touches the network: the architecture is built from its config (a built-in open_clip
name, a JSON config file, or the config stored in the weights file's metadata) with random weights,
and the state dict is read from the file by us and checked key by key, so a file that does not
match the architecture fails with the missing, unexpected and mis-shaped keys named. Architectures
whose text tower or tokenizer open_clip would fetch from the Hugging Face hub are refused unless a
local tokenizer folder is given (and HF text towers always).

Images are float tensors (B, 3, H, W) in [0, 1]; ``ClipModel.preprocess`` resizes (shortest side,
bicubic, antialiased), centre-crops and normalises them as the model expects.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, FileFormatError, ModelError

Tensor = torch.Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_NORMS = ("auto", "clip", "signed")
# Files whose metadata says this format were trained on images in [-1, 1] (the toy world's tiny
# CLIP, ``unlearn_core.toyworld.clip``): "auto" maps them to the "signed" normalisation.
SIGNED_FORMATS = ("unlearn-toy-clip",)
DEFAULT_TEMPLATE = "{}"


# ------------------------------------------------------------------------------------------------
# The maths
# ------------------------------------------------------------------------------------------------

def clip_score_from_embeddings(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """100 * max(cos(image_emb[i], text_emb[i]), 0) per row. (B, E) and (B, E) or (E,) -> (B,).

    Embeddings need not be normalised; a zero vector scores 0.
    """
    if text_emb.dim() == 1:
        text_emb = text_emb.expand_as(image_emb)
    cos = F.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1, eps=1e-12)
    return (100.0 * cos.clamp(min=0.0)).to(image_emb.dtype)


def format_prompt(template: str, prompt: str) -> str:
    """``template`` with ``{}`` (or ``{prompt}``) replaced by ``prompt``."""
    if "{prompt}" in template:
        return template.replace("{prompt}", prompt)
    return template.replace("{}", prompt)


def check_template(template: str) -> None:
    if "{}" not in template and "{prompt}" not in template:
        raise ConfigError("template", template, "the prompt template has no {} placeholder",
                          'write it like "a photo of {}" (or just "{}" for the prompt as is)')


def check_images(images: Tensor, field_name: str = "images") -> None:
    """Images must be float (B, 3, H, W) in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(field_name, shape, "images must be a float tensor (B, 3, H, W)",
                          "pass RGB images channels-first (ComfyUI's IMAGE is (B, H, W, 3): "
                          "permute(0, 3, 1, 2) first)")
    if not images.is_floating_point():
        raise ConfigError(field_name, str(images.dtype), "images must be floating point in [0, 1]",
                          "divide uint8 images by 255")
    if images.shape[0] == 0:
        raise ConfigError(field_name, "0 images", "there are no images to score (an empty batch "
                          "has no mean)", "connect a batch with at least one image")
    if images.numel() and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ConfigError(field_name, (float(images.min()), float(images.max())),
                          "image values must lie in [0, 1]",
                          "map [-1, 1] images with (x + 1) / 2, clamp decoded images to [0, 1]")


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------

@dataclass
class ClipModel:
    """An open_clip model with its tokenizer and image preprocessing, ready to embed.

    ``preprocess``: images (B, 3, H, W) in [0, 1] -> the model's input. ``tokenizer``: list of str
    -> token ids (N, context_length).
    """

    model: nn.Module
    tokenizer: Callable[[list[str]], Tensor]
    preprocess: Callable[[Tensor], Tensor]
    arch: str
    weights: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode_images(self, images: Tensor, batch_size: int = 32) -> Tensor:
        """Unit-norm image embeddings (B, E) float32 for images (B, 3, H, W) in [0, 1]."""
        check_images(images)
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = self.preprocess(images[i : i + batch_size].to(self.device, torch.float32))
            out.append(F.normalize(self.model.encode_image(x.to(self.dtype)).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Unit-norm text embeddings (N, E) float32."""
        texts = [str(t) for t in texts]
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        return int(self.info.get("embed_dim", 0))


class _DropNoPretrainedWarning(logging.Filter):
    # open_clip warns on the root logger when built without weights; we load them ourselves.
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def resize_center_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize so the image covers ``size`` (shortest side, bicubic, antialiased), then centre-crop.

    Matches open_clip's default "shortest" resize mode. (B, 3, H, W) -> (B, 3, size).
    """
    h, w = images.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return images
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", align_corners=False,
                               antialias=True).clamp(0, 1)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return images[..., top : top + th, left : left + tw]


def make_preprocess(size: tuple[int, int], norm: str, mean: Sequence[float] = OPENAI_MEAN,
                    std: Sequence[float] = OPENAI_STD) -> Callable[[Tensor], Tensor]:
    """Images (B, 3, H, W) in [0, 1] -> model input: resize + crop, then ``clip`` ((x - mean) / std)
    or ``signed`` (2x - 1, for models trained on images in [-1, 1])."""
    if norm not in ("clip", "signed"):
        raise ConfigError("image_norm", norm, "unknown image normalisation", "use clip or signed")
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def preprocess(images: Tensor) -> Tensor:
        x = resize_center_crop(images.float(), size)
        if norm == "signed":
            return x * 2 - 1
        return (x - mean_t.to(x.device)) / std_t.to(x.device)

    return preprocess


def _read_weights(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """State dict and (safetensors) metadata from a local file; never a hub name."""
    if not path.is_file():
        raise ConfigError("clip_weights", str(path), "the file does not exist",
                          "give the path of a downloaded open_clip weights file "
                          "(.safetensors, .bin or .pt)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise FileFormatError(f"{path} is not a readable safetensors file ({e}). Fix: give an "
                                  "open_clip weights file.") from e
        return state, meta
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad pickles and TorchScript archives
        raise FileFormatError(
            f"{path} could not be read as a torch state dict ({type(e).__name__}: {e}). Fix: give "
            "open_clip weights as .safetensors or a plain state-dict .bin/.pt (OpenAI's original "
            "TorchScript .pt files are not supported; use the open_clip conversion).") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FileFormatError(f"{path} does not hold a state dict of tensors. Fix: give an open_clip "
                              "weights file.")
    return obj, {}


def _resolve_config(arch: str, meta: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(name, model config) from a built-in name, a JSON file, or the weights' own metadata."""
    import open_clip

    if arch.endswith(".json"):
        p = Path(arch)
        if not p.is_file():
            raise ConfigError("clip_arch", arch, "the config file does not exist",
                              "give an open_clip architecture name (e.g. ViT-B-32) or a JSON config")
        cfg = json.loads(p.read_text())
        return p.stem, cfg.get("model_cfg", cfg)
    if arch in open_clip.list_models():
        return arch, copy.deepcopy(open_clip.get_model_config(arch))
    if meta.get("open_clip_config") and meta.get("open_clip_model") in (arch, None):
        return arch, json.loads(meta["open_clip_config"])
    close = [m for m in open_clip.list_models() if arch.lower().replace("/", "-") in m.lower()][:8]
    raise ConfigError("clip_arch", arch, "not an open_clip architecture",
                      f"pick a built-in name (similar: {', '.join(close) or 'ViT-B-32, ViT-L-14'}) "
                      "or give a JSON model config")


def _check_offline(name: str, cfg: dict[str, Any], tokenizer_dir: str | None) -> None:
    text_cfg = cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        raise ConfigError(
            "clip_arch", name, f"its text tower is the Hugging Face model {text_cfg['hf_model_name']!r}, "
            "which open_clip builds by downloading its config (Unlearn never downloads)",
            "pick an architecture with open_clip's own text transformer (ViT-B-32, ViT-L-14, "
            "ViT-H-14, ViT-bigG-14, ...)")
    needs_hf_tokenizer = bool(text_cfg.get("hf_tokenizer_name")) or "siglip" in name.lower()
    if needs_hf_tokenizer and not tokenizer_dir:
        raise ConfigError(
            "tokenizer_dir", tokenizer_dir, f"{name} uses a Hugging Face tokenizer, which would be "
            "downloaded", "download the tokenizer folder yourself and pass it as tokenizer_dir")


def offline_architectures() -> list[str]:
    """Built-in open_clip architectures ``load_clip`` can build without a download (no Hugging Face
    text tower or tokenizer): the choices for a loader's architecture menu."""
    import open_clip

    out = []
    for name in open_clip.list_models():
        text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
        if not (text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name")
                or "siglip" in name.lower()):
            out.append(name)
    return out


def _build(cfg: dict[str, Any]) -> nn.Module:
    import open_clip

    cfg = copy.deepcopy(cfg)
    cfg.pop("preprocess_cfg", None)
    custom_text = cfg.pop("custom_text", False)
    if "multimodal_cfg" in cfg:
        cls = open_clip.CoCa
    elif custom_text:
        cls = open_clip.CustomTextCLIP
    else:
        cls = open_clip.CLIP
    root = logging.getLogger()
    flt = _DropNoPretrainedWarning()
    root.addFilter(flt)
    try:
        return cls(**cfg)
    finally:
        root.removeFilter(flt)


def _fit_state_dict(model: nn.Module, state: dict[str, Tensor], path: Path, arch: str
                    ) -> dict[str, Tensor]:
    """Check every key and shape; raise naming what does not match."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = model.state_dict()
    # Scalar vs 1-element logit_scale differ between open_clip versions; both mean the same.
    for k in ("logit_scale", "logit_bias"):
        if k in state and k in expected and state[k].numel() == expected[k].numel():
            state[k] = state[k].reshape(expected[k].shape)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    # A model built from config may carry keys the file never stores (e.g. a SigLIP logit_bias).
    optional = {"logit_bias"}
    missing = [k for k in missing if k not in optional]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
        if shapes:
            parts.append(f"{len(shapes)} keys with other shapes (e.g. {'; '.join(shapes[:3])})")
        raise FileFormatError(
            f"{path.name} does not match the open_clip architecture {arch!r}: " + "; ".join(parts)
            + ". Fix: choose the architecture these weights were trained as (clip_arch), or the "
            "weights file for this architecture (clip_weights).")
    return state


def load_clip(
    arch: str,
    weights: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    image_norm: str = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tokenizer_dir: str | None = None,
) -> ClipModel:
    """Build the open_clip architecture ``arch`` and load ``weights`` from a local file. Offline.

    ``arch``: a built-in open_clip name ("ViT-B-32", "ViT-L-14", ...), a path to a JSON model
    config, or the name stored in the weights file's metadata (``open_clip_model`` /
    ``open_clip_config``, as the toy world's tiny CLIP carries). ``image_norm``: "clip" (resize,
    crop, (x - mean) / std with OpenAI's mean/std unless given), "signed" (2x - 1), or "auto"
    (signed for the toy world's tiny CLIP, else clip).
    """
    if image_norm not in IMAGE_NORMS:
        raise ConfigError("image_norm", image_norm, "unknown image normalisation",
                          f"use one of {', '.join(IMAGE_NORMS)}")
    if not isinstance(arch, str) or not arch.strip():
        raise ConfigError("clip_arch", arch, "no architecture given", "name one, e.g. ViT-B-32")
    path = Path(weights)
    if not path.is_file():  # cheap checks before reading anything big
        raise ConfigError("clip_weights", str(path), "the file does not exist",
                          "give the path of a downloaded open_clip weights file")
    state, meta = _read_weights(path)
    name, cfg = _resolve_config(arch.strip(), meta)
    _check_offline(name, cfg, tokenizer_dir)
    try:
        model = _build(cfg)
    except Exception as e:  # a malformed config fails inside open_clip's constructors
        raise ModelError(f"could not build open_clip architecture {name!r} from its config "
                         f"({type(e).__name__}: {e})") from e
    state = _fit_state_dict(model, state, path, name)
    model.load_state_dict(state, strict=False)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    text_cfg = cfg.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    if tokenizer_dir:
        from open_clip.tokenizer import HFTokenizer

        tokenizer = HFTokenizer(str(tokenizer_dir), context_length=context_length)
    else:
        import open_clip

        tokenizer = open_clip.SimpleTokenizer(context_length=context_length,
                                              **text_cfg.get("tokenizer_kwargs", {}))
    image_size = cfg.get("vision_cfg", {}).get("image_size", 224)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    pre_cfg = cfg.get("preprocess_cfg", {})
    norm = image_norm
    if norm == "auto":
        norm = "signed" if meta.get("format") in SIGNED_FORMATS else "clip"
    preprocess = make_preprocess(size, norm, mean or pre_cfg.get("mean", OPENAI_MEAN),
                                 std or pre_cfg.get("std", OPENAI_STD))
    info = {"arch": name, "image_size": list(size), "image_norm": norm,
            "context_length": context_length, "embed_dim": cfg.get("embed_dim"),
            "parameters": sum(p.numel() for p in model.parameters())}
    return ClipModel(model=model, tokenizer=tokenizer, preprocess=preprocess, arch=name,
                     weights=str(path), info=info)


# ------------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipScores:
    """CLIP score per image (B,) and their mean; ``prompts`` as sent to the text encoder."""

    per_image: Tensor
    mean: float
    prompts: tuple[str, ...]

    def table(self, names: Sequence[str] | None = None) -> str:
        """A markdown table: image, prompt, score."""
        names = list(names) if names is not None else [str(i) for i in range(len(self.prompts))]
        lines = ["| image | prompt | CLIP score |", "|---|---|---:|"]
        for n, p, s in zip(names, self.prompts, self.per_image.tolist()):
            lines.append(f"| {n} | {p} | {s:.2f} |")
        lines.append(f"| **mean** | | **{self.mean:.2f}** |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"per_image": [round(float(s), 4) for s in self.per_image], "mean": self.mean,
                "prompts": list(self.prompts)}


def _per_image_prompts(prompts: str | Sequence[str], n: int, template: str) -> list[str]:
    check_template(template)
    if isinstance(prompts, str):
        prompts = [prompts] * n
    prompts = list(prompts)
    if len(prompts) == 1 and n != 1:
        prompts = prompts * n
    if len(prompts) != n:
        raise ConfigError("prompt", len(prompts), f"{n} images need one prompt, or one per image",
                          "give a single prompt or exactly one prompt per image")
    return [format_prompt(template, p) for p in prompts]


def clip_score(
    clip: ClipModel,
    images: Tensor,
    prompts: str | Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 32,
) -> ClipScores:
    """CLIP score of each image (B, 3, H, W) in [0, 1] against its prompt (one for all, or one each).

    Each distinct prompt is encoded once; the result does not depend on batch order or size.
    """
    check_images(images)
    texts = _per_image_prompts(prompts, images.shape[0], template)
    unique = list(dict.fromkeys(texts))
    text_emb = clip.encode_texts(unique)  # (U, E)
    index = torch.tensor([unique.index(t) for t in texts], dtype=torch.long)
    image_emb = clip.encode_images(images, batch_size)  # (B, E)
    scores = clip_score_from_embeddings(image_emb, text_emb[index]).cpu()
    mean = float(scores.mean())
    return ClipScores(per_image=scores, mean=mean, prompts=tuple(texts))
