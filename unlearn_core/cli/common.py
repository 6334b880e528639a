"""What several subcommands share: the config flags (one per ``EraseConfig`` field), the flags
that pick a CLIP model, the checks ``probe`` and ``attack`` make before anything loads, and a
local SD-1.x folder as the measuring code sees it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import RECIPES, EraseConfig, config_fields
from ..errors import ConfigError

TOY_ARCH = "unlearn-toy-clip"
SD_VAE_SCALE = 0.18215  # SD-1's latent scaling factor (LDM, Rombach et al. 2022)


def _escape(text: str) -> str:
    """Help text that argparse shows as written (argparse %-formats help strings)."""
    return text.replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per EraseConfig field, named after it, with the field's help text."""
    for name, f in config_fields().items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        meta = f.metadata
        help_text = _escape(meta["help"] + f" (default: {f.default!r})")
        if isinstance(f.default, tuple):
            single = "--" + ("concept" if name == "concepts" else name.replace("_", "-")[:-1])
            parser.add_argument(single, dest=name, action="append", default=None,
                                help=help_text + " Repeat the flag for several.")
        elif isinstance(f.default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=type(f.default), default=None,
                                choices=meta.get("choices"), help=help_text)


def config_from_args(args: argparse.Namespace, base: dict | None = None, **overrides
                     ) -> EraseConfig:
    """The flags given, over ``--recipe``'s settings (where the parser has one), over ``base``
    (e.g. the toy model's settings), over defaults."""
    recipe = getattr(args, "recipe", None)
    values = dict(base or {})
    values.update(RECIPES[recipe] if recipe else {})
    for name in config_fields():
        v = getattr(args, name, None)
        if v is not None:
            values[name] = tuple(v) if isinstance(v, list) else v
    values.update(overrides)
    return EraseConfig(**values)


def parse_settings(items: Sequence[str], own_flags: Mapping[str, str] | None = None,
                   flag: str = "--set") -> dict[str, Any]:
    """``FIELD=VALUE`` items (``--set lr=1e-4``) -> {field: value}, each value read as its
    EraseConfig field's type: a whole number, a number, true/false, text, or a comma-separated
    list for the prompt lists. ``own_flags``: fields the command sets from its own flags (field ->
    the flag to use instead), refused here."""
    fields = config_fields()
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or key not in fields:
            raise ConfigError(flag, item, "not FIELD=VALUE with a field of EraseConfig",
                              f"write e.g. {flag} lr=1e-4; fields: {', '.join(fields)}")
        if own_flags and key in own_flags:
            raise ConfigError(flag, item, f"{key} is set by the benchmark's own flag",
                              f"use {own_flags[key]} instead")
        kind = type(fields[key].default)
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("true", "1")
            elif kind is tuple:
                out[key] = tuple(v.strip() for v in raw.split(",") if v.strip())
            else:
                out[key] = kind(raw)
        except ValueError:
            what = {int: "a whole number", float: "a number", bool: "true or false"}.get(kind, "text")
            raise ConfigError(flag, item, f"{raw!r} is not {what}", f"give {key} {what}") from None
    return out


def add_clip_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that pick a CLIP model (``unlearn score``, ``probe`` and ``attack``)."""
    p.add_argument("--clip-arch", default=None,
                   help="open_clip architecture (e.g. ViT-B-32, ViT-L-14) or a JSON model config; "
                   "default: the toy world's tiny CLIP")
    p.add_argument("--clip-weights", default=None,
                   help="local open_clip weights file (.safetensors, .bin, .pt); never downloaded")
    p.add_argument("--image-norm", default="auto", choices=("auto", "clip", "signed"),
                   help="image normalisation: clip mean/std, or signed (2x-1, the toy CLIP)")
    p.add_argument("--tokenizer-dir", default=None,
                   help="local Hugging Face tokenizer folder, for architectures that need one")
    p.add_argument("--template", default="{}",
                   help='prompt template; {} is replaced by the prompt, e.g. "a photo of {}"')


def load_clip_from_args(args: argparse.Namespace, device: str = "cpu"):
    from ..metrics.clip_score import load_clip

    arch, weights = args.clip_arch, args.clip_weights
    if weights is None:
        if arch not in (None, TOY_ARCH):
            raise ConfigError("--clip-weights", None, f"--clip-arch {arch} needs its weights file",
                              "give --clip-weights PATH (a file you downloaded)")
        from ..toyworld import TINY_CLIP_FILE, asset_path, tiny_clip_scorer

        weights = asset_path(TINY_CLIP_FILE)
        if not weights.is_file():
            raise ConfigError("--clip-weights", None, "no CLIP weights given and the toy world's tiny "
                              f"CLIP is missing ({weights})", "give --clip-arch and --clip-weights")
        return tiny_clip_scorer(weights, device=device, image_norm=args.image_norm,
                                tokenizer_dir=args.tokenizer_dir)
    if arch is None:
        raise ConfigError("--clip-arch", None, "the architecture of --clip-weights is not given",
                          "give --clip-arch (e.g. ViT-B-32) or a JSON model config")
    return load_clip(arch, weights, device=device, image_norm=args.image_norm,
                     tokenizer_dir=args.tokenizer_dir)


def check_sources(args: argparse.Namespace, toy: bool, verb: str, clip_why: str, clip_fix: str,
                  prompts: dict[str, list[str]]) -> None:
    """The checks ``unlearn probe`` and ``unlearn attack`` share, before anything loads: the
    erasure file, the scorer for the model's world, and on SD-1.x the CLIP weights and the erase
    command's prompt-length rule (the folder's tokenizer only)."""
    if args.erasure is not None and not Path(args.erasure).is_file():
        raise ConfigError("--erasure", args.erasure, "the file does not exist",
                          "give the .safetensors file written by `unlearn erase`")
    if not toy and args.erasure is None:
        raise ConfigError("--erasure", None, f"a model on disk needs the erasure to {verb}",
                          "give --erasure FILE (from `unlearn erase`)")
    if args.scorer == "judge" and not toy:
        raise ConfigError("--scorer", "judge", "judges exist only in the toy world",
                          "use --scorer clip with --clip-arch and --clip-weights")
    if not toy and args.clip_weights is None:
        raise ConfigError("--clip-weights", None,
                          f"SD-1's text encoder has no projection head, so {clip_why}", clip_fix)
    if not toy:
        from ..prompts import check_prompt_lengths
        from ..sd1 import load_tokenizer, token_counter

        check_prompt_lengths(prompts, token_counter(load_tokenizer(args.model)))


def layer_shapes(module) -> dict[str, tuple[int, ...]]:
    """Every weight's shape by module name: what ``files.load_erasure`` checks a file against."""
    import torch

    return {n: tuple(m.weight.shape) for n, m in module.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor)}


def load_erasure_file(path: str, denoiser):
    """``--erasure``: the file's deltas, checked against the denoiser's layers, as an erasure the
    measuring code applies."""
    import sys

    from ..files import load_erasure
    from ..metrics.generation import DeltaErasure

    loaded = load_erasure(path, layer_shapes(denoiser.module))
    print(f"erasure: {path} ({len(loaded.deltas)} layers)", file=sys.stderr)
    return DeltaErasure(loaded.deltas, loaded.metadata)


def load_vae(path: str, device: str):
    """The VAE of a local SD-1.x folder, in eval mode on ``device``."""
    from diffusers import AutoencoderKL

    from ..sd1 import load_component

    return load_component(Path(path), "vae", lambda: AutoencoderKL.from_pretrained(
        Path(path) / "vae", local_files_only=True)).to(device).eval()


def vae_decode(vae, latents):
    """UNet-scaled latents -> images (B, 3, H, W) in [0, 1]."""
    import torch

    from ..metrics.generation import unit_from_signed

    with torch.no_grad():
        x = vae.decode(latents.to(vae.device, vae.dtype) / SD_VAE_SCALE).sample
    return unit_from_signed(x.float())


class SDWorld:
    """A local SD-1.x folder as ``probe`` and ``attack`` use it: UNet denoiser, CLIP text encoder,
    VAE decoder (and encoder, for ``attack --images``)."""

    def __init__(self, path: str, device: str, resolution: int) -> None:
        import torch

        from ..sd1 import SD1Pipeline

        if resolution % 8:
            raise ConfigError("--resolution", resolution, "must be a multiple of 8", "use e.g. 512")
        pipe = SD1Pipeline(path, device=device)
        self.denoiser = pipe.denoiser
        self.encode = pipe.encode
        self.vae = load_vae(path, device)
        self.latent_shape = (4, resolution // 8, resolution // 8)
        self._torch = torch

    def decode(self, latents):
        return vae_decode(self.vae, latents)

    def encode_images(self, images):
        """Images (B, 3, H, W) in [0, 1] -> the VAE's latents (its mean), scaled for the UNet."""
        from ..metrics.generation import signed_from_unit

        with self._torch.no_grad():
            x = signed_from_unit(images).to(self.vae.device, self.vae.dtype)
            return self.vae.encode(x).latent_dist.mean.float().cpu() * SD_VAE_SCALE


def erase_in_world(world, concept: str, method: str, label: str | None = None, **settings):
    """The toy world's own erasure of ``concept`` (``probe`` and ``attack`` without
    ``--erasure``), with a progress bar (named after ``label``, default the concept) while it
    trains."""
    from tqdm import tqdm

    with tqdm(desc=f"erasing {label or concept!r} ({method})", unit="step",
              disable=method == "uce") as bar:

        def step(info) -> None:  # returns None: a truthy return would cancel the trainer
            bar.update(1)

        return world.erase(concept, method, callback=step, **settings)


def with_progress(desc: str, work):
    """``work(on_progress)`` under a progress bar that ``on_progress(done, total)`` moves."""
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, unit="step")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        return work(progress)
    finally:
        bar.close()


def load_world(args: argparse.Namespace, device: str):
    """The model ``probe`` and ``attack`` work on: the toy world without ``--model``, else the
    SD-1.x folder; ``--output`` made first, torch's threads set for the model's size."""
    from ..threads import parameter_count, set_threads

    if args.output:
        Path(args.output).mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from ..toyworld.world import load_toy_world

        world = load_toy_world()
    else:
        world = SDWorld(args.model, device, args.resolution)
    set_threads(args.threads, parameter_count(world.denoiser.module))
    return world

