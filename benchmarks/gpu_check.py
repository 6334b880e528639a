"""GPU check: an SD-1.4-shaped erasure at 512 px (64×64 latent) in bf16 on CUDA, random weights.

Prints seconds per step (mean), peak allocated GPU memory, and the projection to a full erasure
(the preset's step count), for our engine without and with gradient checkpointing and — unless
--no-reference — a few steps of the
official loop's structure (benchmarks/reference_sdd.py, fp32, two UNets) for comparison.

    python benchmarks/gpu_check.py --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--preset", default="fast", help="config.RECIPES name (fast, fast-lora, sdd-paper)")
    ap.add_argument("--full-steps", type=int, default=0,
                    help="steps of a full erasure for the projection (0 = the preset's or 1500)")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="check the script's code path on the CPU (fp32, 8x8 latent; no figures)")
    args = ap.parse_args()
    if args.cpu_dry_run:
        return dry_run(args)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run this on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    from speed import preset_config, random_embeddings, sd14_unet

    from unlearn_core import DiffusersDenoiser

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    emb_c, emb_e = random_embeddings()
    full_steps = args.full_steps or preset_config(args.preset).get("steps", 1500)
    den = DiffusersDenoiser(sd14_unet().to(dev, torch.bfloat16))
    ours_step_s = None
    for variant, res, times, peak in run_ours(den, emb_c, emb_e, args.preset, 64, args.steps,
                                              cuda=True):
        step_s = statistics.fmean(times)
        ours_step_s = step_s if ours_step_s is None else ours_step_s
        evals = (res.metadata["unet_evals_nograd"] + res.metadata["unet_evals_grad"]) / args.steps
        print(f"ours ({variant}, bf16 weights, fp32 deltas): {step_s:.3f} s/step, peak allocated "
              f"{peak:.2f} GiB, UNet evals/step {evals:.1f}, projected full erasure "
              f"({full_steps} steps): {step_s * full_steps / 60:.1f} min", flush=True)
    del den, res
    torch.cuda.empty_cache()
    if not args.no_reference:
        from reference_sdd import ReferenceSDD

        unet = sd14_unet().to(dev)
        ref = ReferenceSDD(unet, DiffusersDenoiser(unet).alphas_cumprod.to(dev), emb_c.to(dev),
                           emb_e.to(dev), 64)
        torch.cuda.reset_peak_memory_stats()
        ref.step(1)  # warm-up
        # four steps with trajectory lengths 6, 18, 31, 43: mean 24.5, as the official U{0..49}
        ref_step_s = statistics.fmean(ref.run(4, stratified=True, sync=torch.cuda.synchronize))
        print(f"reference (SDD structure, fp32, two UNets): {ref_step_s:.3f} s/step, peak "
              f"allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, projected 1500 "
              f"steps: {ref_step_s * 1500 / 60:.1f} min")
        print(f"ratio ours/reference seconds per step: {ours_step_s / ref_step_s:.3f}")
    return 0


def run_ours(den, emb_c, emb_e, preset: str, resolution: int, steps: int, cuda: bool):
    """Our erasure with ``preset`` and with ``preset+ckpt``, each after a 2-step warm-up;
    yields (variant, result, seconds per step, peak allocated GiB or None on the CPU)."""
    import torch
    from speed import preset_config, timed_erase, training_conditioning

    from unlearn_core import EraseConfig, erase

    cond = training_conditioning(emb_c, emb_e)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for variant in (preset, preset + "+ckpt"):
        cfg = EraseConfig(concepts=("x",), resolution=resolution,
                          **(preset_config(variant) | {"steps": steps}))
        erase(den, cond, cfg.replace(steps=2))  # warm-up (kernels, allocator)
        if cuda:
            sync()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        res, times = timed_erase(den, cond, cfg, sync)
        yield variant, res, times, torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def dry_run(args: argparse.Namespace) -> int:
    """The same erasure calls on the CPU at an 8x8 latent, so a broken script is found before
    GPU time is spent; prints no speed figures."""
    from speed import random_embeddings, sd14_unet

    from unlearn_core import DiffusersDenoiser

    emb_c, emb_e = random_embeddings()
    den = DiffusersDenoiser(sd14_unet())
    for variant, res, _, _ in run_ours(den, emb_c, emb_e, args.preset, 8, 2, cuda=False):
        print(f"dry run {variant}: {len(res.deltas)} layers, losses {res.loss_history}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
