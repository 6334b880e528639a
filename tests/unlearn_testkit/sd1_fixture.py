"""A tiny diffusers-format folder shaped like SD-1.x (768-wide context, 4 latent channels), with a
real CLIP BPE tokenizer on a minimal byte-level vocabulary. Built in a temp folder, never committed."""

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_sd1_folder(root: Path, seed: int = 0) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
        layers_per_block=1, attention_head_dim=8, norm_num_groups=8,
    )
    unet.save_pretrained(root / "unet")
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    tok = root / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer"}))
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=514, hidden_size=768, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=8, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
        pad_token_id=513))
    text.save_pretrained(root / "text_encoder")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "beta_end": 0.012, "num_train_timesteps": 1000}))
    return root
