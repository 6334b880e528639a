"""The toy text-to-image model: a word tokenizer, a tiny text encoder and a tiny SD-style UNet.

The UNet is diffusers' ``UNet2DConditionModel`` (16x16x3 in and out, cross-attention at 8x8 and
4x4 only), so its ``attn2`` layers, parameter selections and LoRA key names are the same as on
SD-1.x. It predicts the noise ε (DDPM, Ho et al. 2020, https://arxiv.org/abs/2006.11239) under
SD's "scaled linear" schedule: β = linspace(√0.00085, √0.012, 1000)², ᾱ_t = Π(1 − β).
Classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598) needs the empty
prompt, which encodes to BOS + EOS + padding like any other prompt.

The whole model (text encoder + UNet) lives in one safetensors file; its configs, vocabulary and
schedule are stored in the file's metadata, so the file is the only record needed to rebuild it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .dataset import COLOURS, SHAPES, TEXTURES

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
VOCAB: tuple[str, ...] = (PAD, BOS, EOS, UNK, "a", ",", *SHAPES, *COLOURS, *TEXTURES)
MAX_LENGTH = 8

BETA_START = 0.00085
BETA_END = 0.012
NUM_TRAIN_TIMESTEPS = 1000

FORMAT = "unlearn-toy-model"
FORMAT_VERSION = "1"


def scaled_linear_betas(
    beta_start: float = BETA_START, beta_end: float = BETA_END, steps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """SD's β schedule (T,), float64: linspace(√β₀, √β₁, T)²."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2


def alphas_cumprod(betas: torch.Tensor | None = None) -> torch.Tensor:
    """ᾱ_t (T,) float32 of the schedule."""
    betas = scaled_linear_betas() if betas is None else betas
    return torch.cumprod(1.0 - betas, dim=0).float()


class WordTokenizer:
    """Splits on spaces (a comma is its own word), maps words to ids, adds BOS/EOS, pads to L.

    Unknown words become ``<unk>``; words beyond L − 2 are cut. ``""`` → [BOS, EOS, PAD, ...].
    """

    def __init__(self, vocab: tuple[str, ...] = VOCAB, max_length: int = MAX_LENGTH) -> None:
        self.vocab = tuple(vocab)
        self.max_length = max_length
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def words(self, text: str) -> list[str]:
        return text.lower().replace(",", " , ").split()

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(w, self.index[UNK]) for w in self.words(text)]
        ids = [self.index[BOS], *ids[: self.max_length - 2], self.index[EOS]]
        return ids + [self.index[PAD]] * (self.max_length - len(ids))

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in self.words(text) if w not in self.index]

    def __call__(self, texts: str | list[str] | tuple[str, ...]) -> torch.Tensor:
        """Token ids (B, L) int64."""
        if isinstance(texts, str):
            texts = [texts]
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long)


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = len(VOCAB)
    max_length: int = MAX_LENGTH
    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 2


class ToyTextEncoder(nn.Module):
    """Token embedding + learned positions + pre-norm transformer encoder → context (B, L, D).

    Every position attends to every other (padding included, as in SD's CLIP, whose padding
    positions also carry context).
    """

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig()) -> None:
        super().__init__()
        self.config = config
        d = config.width
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, d))
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, d * config.mlp_ratio, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) int64 → context (B, L, D)."""
        h = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
        return self.final_norm(self.encoder(h))


def default_unet_config(context_dim: int = 64) -> dict:
    """diffusers ``UNet2DConditionModel`` kwargs: 16x16x3, blocks (32, 64, 64), plain block at
    16x16, cross-attention at 8x8 and 4x4 (and the 4x4 mid block); ≈1.69M parameters."""
    return dict(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=context_dim,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def build_unet(config: dict | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(config or default_unet_config()))


@dataclass
class ToyModel:
    """The toy text-to-image model: tokenizer, text encoder, UNet and noise schedule."""

    tokenizer: WordTokenizer
    text_encoder: ToyTextEncoder
    unet: nn.Module
    alphas_cumprod: torch.Tensor = field(default_factory=alphas_cumprod)  # (1000,)
    metadata: dict = field(default_factory=dict)
    # answers worked out from these weights (erasure.default_values), kept for the next caller
    known: dict = field(default_factory=dict, repr=False, compare=False)

    @torch.no_grad()
    def encode(self, prompts: str | list[str] | tuple[str, ...]) -> torch.Tensor:
        """Prompts → context (B, L, D) from the frozen text encoder."""
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(self.tokenizer(prompts).to(device))

    def to(self, device: torch.device | str) -> ToyModel:
        self.text_encoder.to(device)
        self.unet.to(device)
        return self

    def eval(self) -> ToyModel:
        self.text_encoder.eval()
        self.unet.eval()
        return self


def new_toy_model(
    text_config: TextEncoderConfig = TextEncoderConfig(), unet_config: dict | None = None
) -> ToyModel:
    """An untrained toy model (weights from torch's current RNG)."""
    text_encoder = ToyTextEncoder(text_config)
    unet = build_unet(unet_config or default_unet_config(text_config.width))
    tokenizer = WordTokenizer(VOCAB, text_config.max_length)
    return ToyModel(tokenizer, text_encoder, unet)


def _unet_config_dict(unet: nn.Module) -> dict:
    keep = default_unet_config().keys()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet.config).items() if k in keep}


def save_toy_model(
    model: ToyModel, path: str | Path, dtype: torch.dtype = torch.float32, extra: dict | None = None
) -> None:
    """Write text encoder + UNet weights to ONE safetensors file, configs in its metadata."""
    from safetensors.torch import save_file

    tensors = {}
    for prefix, module in (("text_encoder.", model.text_encoder), ("unet.", model.unet)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().to("cpu", dtype).contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "text_encoder_config": json.dumps(asdict(model.text_encoder.config)),
        "unet_config": json.dumps(_unet_config_dict(model.unet)),
        "vocab": json.dumps(list(model.tokenizer.vocab)),
        "schedule": json.dumps(
            {"beta_schedule": "scaled_linear", "beta_start": BETA_START, "beta_end": BETA_END,
             "num_train_timesteps": NUM_TRAIN_TIMESTEPS, "prediction_type": "epsilon"}
        ),
        **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra or {}).items()},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def read_toy_model(path: str | Path) -> ToyModel:
    """Rebuild a toy model from a file written by ``save_toy_model`` (float32, eval mode, CPU)."""
    from .tagged import read_tagged

    tensors, metadata = read_tagged(path, FORMAT, "toy model", "scripts/train_toy_model.py")
    tensors = {k: v.float() for k, v in tensors.items()}
    text_config = TextEncoderConfig(**json.loads(metadata["text_encoder_config"]))
    unet_config = json.loads(metadata["unet_config"])
    unet_config = {k: (tuple(v) if isinstance(v, list) else v) for k, v in unet_config.items()}
    schedule = json.loads(metadata["schedule"])
    model = new_toy_model(text_config, unet_config)
    model.tokenizer = WordTokenizer(tuple(json.loads(metadata["vocab"])), text_config.max_length)
    model.text_encoder.load_state_dict(
        {k[len("text_encoder."):]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
    )
    model.unet.load_state_dict({k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")})
    model.alphas_cumprod = alphas_cumprod(
        scaled_linear_betas(schedule["beta_start"], schedule["beta_end"], schedule["num_train_timesteps"])
    )
    model.metadata = metadata
    for p in (*model.text_encoder.parameters(), *model.unet.parameters()):
        p.requires_grad_(False)
    return model.eval()
