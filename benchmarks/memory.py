"""Training memory at 512 px without a GPU: the bytes one training step keeps for its backward
pass (autograd's saved tensors, counted exactly), with and without gradient checkpointing, on an
SD-1.4-shaped UNet (random weights, full channel counts) at a 64x64 latent, in the dtype a GPU
would use, plus the bytes of the trained state. From these the script projects the peak GPU
memory of an erasure; the projection is arithmetic, not a GPU measurement (benchmarks/gpu_check.py
measures it on a CUDA machine).

    python benchmarks/memory.py --latent 64 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_overrides(items: list[str]) -> dict:
    """``FIELD=VALUE`` items (EraseConfig fields), read as ``unlearn bench --set`` reads them."""
    from unlearn_core.cli.common import parse_settings
    from unlearn_core.errors import ConfigError

    try:
        return parse_settings(items)
    except ConfigError as e:  # one line, as the script's other refusals
        raise SystemExit(str(e)) from None


def measure(preset: str, latent: int, dtype_name: str, overrides: dict | None = None) -> dict:
    """One training step of ``preset`` (speed.preset_config; "+ckpt" = checkpointing); returns
    the bytes autograd kept and the trained state's bytes."""
    import torch
    from speed import preset_config, random_embeddings, sd14_unet, training_conditioning

    from unlearn_core import DiffusersDenoiser, EraseConfig, erase

    dtype = getattr(torch, DTYPES[dtype_name])
    unet = sd14_unet().to(dtype)
    den = DiffusersDenoiser(unet)
    cond = training_conditioning(*random_embeddings())
    settings = preset_config(preset) | (overrides or {})
    # One step from a one-step trajectory: the sampling passes keep nothing (no grad), so the
    # count below is the student pass alone, at the preset's batch size.
    cfg = EraseConfig(concepts=("x",), resolution=latent,
                      **(settings | {"steps": 1, "sampling_steps": 1, "trajectory_reuse": 1}))
    kept = [0]
    # weights saved for the backward pass are references, not new memory
    seen = {p.untyped_storage().data_ptr() for p in unet.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in seen and not (t.is_leaf and t.requires_grad):  # nor the trained tensors
            # a tensor saved by several ops is kept once
            seen.add(key)
            kept[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        res = erase(den, cond, cfg)
    return {"preset": preset, "latent": latent, "dtype": dtype_name,
            "batch_size": cfg.batch_size, "kept_activation_bytes": kept[0],
            "trained_parameters": res.metadata["trained_parameters"],
            "unet_bytes": sum(p.numel() * p.element_size() for p in unet.parameters()),
            "loss": res.loss_history[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--presets", nargs="+", default=["fast", "fast+ckpt", "fast-lora",
                                                     "fast-lora+ckpt"])
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="config overrides for every preset, e.g. selection=noxattn")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.latent, args.dtype, parse_overrides(args.set))))
        return
    rows = []
    for preset in args.presets:
        out = subprocess.run([sys.executable, __file__, "--one", preset, "--latent",
                              str(args.latent), "--dtype", args.dtype, "--threads",
                              str(args.threads), "--set", *args.set],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {preset}: {rows[-1]['kept_activation_bytes'] / 2**30:.2f} GiB kept",
              file=sys.stderr, flush=True)
    gib = 2**30
    extra = f"; overrides {parse_overrides(args.set)}" if args.set else ""
    print(f"SD-1.4-shaped UNet, latent {args.latent}×{args.latent} ({args.latent * 8} px), "
          f"weights in {args.dtype}: {rows[0]['unet_bytes'] / gib:.2f} GiB{extra}\n")
    print("| preset | batch | activations kept for backward | trained state (fp32: delta, grad, "
          "2 AdamW moments, EMA) | projected peak (weights + state + activations) |")
    print("|---|---|---|---|---|")
    for r in rows:
        state = 5 * 4 * r["trained_parameters"]
        peak = r["unet_bytes"] + state + r["kept_activation_bytes"]
        print(f"| {r['preset']} | {r['batch_size']} | {r['kept_activation_bytes'] / gib:.2f} GiB | "
              f"{state / gib:.2f} GiB | {peak / gib:.2f} GiB |")
    print("\nThe projection leaves out the CUDA context (~0.5 GiB), allocator slack, the "
          "recomputed block's activations under checkpointing and the sampling passes' "
          "transient activations (no grad, one pass at a time).")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
