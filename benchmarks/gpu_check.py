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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--preset", default="fast", help="config.PRESETS name (fast, fast-lora, sdd-paper)")
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
    from speed import preset_config, sd14_unet

    from unlearn_core import Conditioning, DiffusersDenoiser, EraseConfig, erase

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    g = torch.Generator().manual_seed(1)
    emb_c, emb_e = torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)
    full_steps = args.full_steps or preset_config(args.preset).get("steps", 1500)

    unet = sd14_unet().to(dev, torch.bfloat16)
    den = DiffusersDenoiser(unet)
    cond = Conditioning(concepts=[emb_c], empty=emb_e, trajectory=emb_c)
    med = None
    for variant in (args.preset, args.preset + "+ckpt"):
        cfg = EraseConfig(concepts=("x",), resolution=64,
                          **(preset_config(variant) | {"steps": args.steps}))
        erase(den, cond, cfg.replace(steps=2))  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        times, last = [], [time.perf_counter()]

        def cb(info, times=times, last=last):
            torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        last[0] = time.perf_counter()
        res = erase(den, cond, cfg, callback=cb)
        peak = torch.cuda.max_memory_allocated() / 2**30
        step_s = statistics.fmean(times)
        med = step_s if med is None else med
        evals = (res.metadata["unet_evals_nograd"] + res.metadata["unet_evals_grad"]) / args.steps
        print(f"ours ({variant}, bf16 weights, fp32 deltas): {step_s:.3f} s/step, peak allocated "
              f"{peak:.2f} GiB, UNet evals/step {evals:.1f}, projected full erasure "
              f"({full_steps} steps): {step_s * full_steps / 60:.1f} min", flush=True)
    del unet, den, res
    torch.cuda.empty_cache()
    if not args.no_reference:
        from reference_sdd import ReferenceSDD

        unet = sd14_unet().to(dev)
        ref = ReferenceSDD(unet, DiffusersDenoiser(unet).alphas_cumprod.to(dev), emb_c.to(dev),
                           emb_e.to(dev), 64)
        torch.cuda.reset_peak_memory_stats()
        ref.step(1)  # warm-up
        ref_times = []
        for n in (6, 18, 31, 43):  # trajectory lengths spread evenly: mean 24.5, as U{0..49}
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            ref.step(n)
            torch.cuda.synchronize()
            ref_times.append(time.perf_counter() - t0)
        rmed = statistics.fmean(ref_times)
        print(f"reference (SDD structure, fp32, two UNets): {rmed:.3f} s/step, peak allocated "
              f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, projected 1500 steps: "
              f"{rmed * 1500 / 60:.1f} min")
        print(f"ratio ours/reference seconds per step: {med / rmed:.3f}")
    return 0


def dry_run(args: argparse.Namespace) -> int:
    """The same erasure calls on the CPU at an 8x8 latent, so a broken script is found before a
    GPU is lent; prints no speed figures."""
    import torch
    from speed import preset_config, sd14_unet

    from unlearn_core import Conditioning, DiffusersDenoiser, EraseConfig, erase

    g = torch.Generator().manual_seed(1)
    emb_c, emb_e = torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)
    den = DiffusersDenoiser(sd14_unet())
    cond = Conditioning(concepts=[emb_c], empty=emb_e, trajectory=emb_c)
    for variant in (args.preset, args.preset + "+ckpt"):
        cfg = EraseConfig(concepts=("x",), resolution=8, **(preset_config(variant) | {"steps": 2}))
        res = erase(den, cond, cfg)
        print(f"dry run {variant}: {len(res.deltas)} layers, losses {res.loss_history}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
