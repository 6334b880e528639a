"""Loading a diffusers-format Stable Diffusion 1.x folder from local disk (never from a hub).

The folder's ``unet/config.json`` is checked *before* any weight is read, so a wrong path or an
SDXL/SD-2 folder fails in milliseconds with a message that says what was found.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .denoiser import DiffusersDenoiser, scaled_linear_alphas_cumprod
from .errors import ConfigError, ModelError

SD1_CONTEXT_DIM = 768


def check_sd1_folder(path: str | Path) -> dict:
    """Validate the folder layout and the UNet config; returns the UNet config dict."""
    root = Path(path)
    if not root.exists():
        raise ConfigError("model", str(root), "the path does not exist",
                          "give the local folder of a diffusers-format SD-1.x model")
    cfg_path = root / "unet" / "config.json"
    if not cfg_path.is_file():
        raise ConfigError("model", str(root), "no unet/config.json inside: not a diffusers-format "
                          "model folder", "give the folder that holds unet/, text_encoder/, "
                          "tokenizer/ (e.g. a local copy of stable-diffusion-v1-4)")
    cfg = read_json(cfg_path)
    check_sd1_config(cfg, str(root))
    for sub in ("text_encoder", "tokenizer"):
        if not (root / sub).is_dir():
            raise ConfigError("model", str(root), f"missing the {sub}/ folder",
                              "use a complete diffusers-format SD-1.x folder")
    return cfg


def read_json(path: Path) -> dict:
    """A config file of the model folder; unreadable or not a JSON object -> ModelError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e}). Fix: the model folder is damaged; copy "
                         "or convert it again") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path}: holds a {type(data).__name__}, not a JSON object. Fix: the model "
                         "folder is damaged; copy or convert it again")
    return data


def check_sd1_config(cfg: dict, where: str) -> None:
    """SD-1.x: 4 latent channels, 768-wide text context, no added (SDXL) embeddings."""
    ctx = cfg.get("cross_attention_dim")
    problems = []
    if ctx != SD1_CONTEXT_DIM:
        problems.append(f"cross_attention_dim {ctx} (SD-1.x: 768; SD-2: 1024; SDXL: 2048)")
    if cfg.get("in_channels") != 4:
        problems.append(f"in_channels {cfg.get('in_channels')} (SD-1.x: 4)")
    if cfg.get("addition_embed_type"):
        problems.append(f"addition_embed_type {cfg.get('addition_embed_type')!r} (SDXL)")
    if problems:
        raise ModelError(f"{where} is not a Stable Diffusion 1.x UNet: " + "; ".join(problems)
                         + ". Fix: load an SD-1.x model (1.4, 1.5 or a fine-tune of them).")


def load_tokenizer(path: str | Path):
    """The folder's CLIP tokenizer (small: read before the weights, to check prompts early)."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(Path(path) / "tokenizer", local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"{path}: its tokenizer/ folder cannot be read ({e}). Fix: use a "
                         "complete diffusers-format SD-1.x folder.") from e


def token_counter(tokenizer):
    """``count(text)`` = the number of text tokens (no start/end) ``tokenizer`` makes of it."""
    def count(text: str) -> int:
        return len(tokenizer.tokenize(text))

    return count


def check_training_layers(path: str | Path, config) -> None:
    """The checks that need the UNet's layer shapes -- a selection that matches no layer, a LoRA
    rank above the smallest selected layer -- from ``unet/config.json`` alone: the UNet is built
    on the meta device (no memory, no weights read), in well under a second."""
    if config.method != "train":
        return
    from diffusers import UNet2DConditionModel

    from .selection import select_layers
    from .trainer import check_rank

    unet_dir = Path(path) / "unet"
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(unet_dir))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelError(f"{unet_dir}/config.json cannot be read as a UNet config ({e}). Fix: use "
                         "a complete diffusers-format SD-1.x folder.") from e
    check_rank(config, select_layers(unet, config.selection))


def scheduler_alphas(root: Path) -> torch.Tensor:
    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return scaled_linear_alphas_cumprod()
    cfg = read_json(path)
    if cfg.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ModelError(f"{path}: beta_schedule {cfg.get('beta_schedule')!r}; SD-1.x uses "
                         "scaled_linear")
    return scaled_linear_alphas_cumprod(cfg.get("num_train_timesteps", 1000),
                                        cfg.get("beta_start", 0.00085), cfg.get("beta_end", 0.012))


def load_component(root: Path, sub: str, load):
    """``load()`` one part of the model folder (``sub``: unet, text_encoder, ...); a damaged,
    truncated or foreign file becomes a ModelError naming the folder and the fix."""
    try:
        return load()
    except MemoryError:
        raise
    except Exception as e:  # safetensors, torch, diffusers and transformers each raise their own
        if type(e).__name__ == "OutOfMemoryError":
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{root / sub}: could not be loaded ({type(e).__name__}: {reason[:300]}). "
                         f"Fix: the files in {sub}/ are damaged, incomplete or not SD-1.x weights; "
                         "copy or convert the model folder again") from e


class SD1Pipeline:
    """A local SD-1.x model's UNet (as a Denoiser) and text encoder."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        root = Path(path)
        check_sd1_folder(root)
        unet = load_component(root, "unet", lambda: UNet2DConditionModel.from_pretrained(
            root / "unet", local_files_only=True, torch_dtype=dtype))
        self.denoiser = DiffusersDenoiser(unet.to(device).eval(), scheduler_alphas(root))
        self.tokenizer = load_component(root, "tokenizer", lambda: CLIPTokenizer.from_pretrained(
            root / "tokenizer", local_files_only=True))
        self.count_tokens = token_counter(self.tokenizer)
        self.text_encoder = load_component(root, "text_encoder", lambda: CLIPTextModel.from_pretrained(
            root / "text_encoder", local_files_only=True, torch_dtype=dtype)).to(device).eval()
        self.device = device

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(self.device))[0]

    def last_token(self, texts: Sequence[str]) -> list[int]:
        """Index of each text's last real token: BOS is 0, so a text of n tokens ends at n."""
        ids = self.tokenizer(list(texts), truncation=True,
                             max_length=self.tokenizer.model_max_length).input_ids
        return [max(0, len(i) - 2) for i in ids]
