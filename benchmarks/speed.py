"""Speed and memory: the official SDD loop's structure (benchmarks/reference_sdd.py) and our engine,
side by side in one run, on an SD-1.4-shaped UNet with random weights (full channel counts) at a
reduced latent size that fits the CPU.

Each side runs in its own subprocess so its peak resident memory is its own. Printed per side:
UNet evaluations per training step (counted per latent; a guided pass counts 2), seconds per step
(mean over the timed steps: our steps that sample a trajectory cost more than those that reuse
it, and the reference's trajectory lengths are spread evenly over 0..49 so that a few steps cost
what the average of a long run does), peak RSS, and FLOPs per step against the floor (one
forward/backward plus one target forward per step), then the ratios ours / reference. Use a
step count that is a multiple of the trajectory reuse (4).

    python benchmarks/speed.py --latent 16 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def sd14_unet(seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    # diffusers' default UNet2DConditionModel config is SD-1.x's (320/640/1280/1280, 8 heads);
    # the context width is CLIP ViT-L/14's 768.
    return UNet2DConditionModel(cross_attention_dim=768).eval()


def forward_flops(unet, latent: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 4, latent, latent)
    c = torch.zeros(1, 77, 768)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        unet(x, torch.tensor([500]), encoder_hidden_states=c)
    return int(fc.get_total_flops())


def preset_config(preset: str) -> dict:
    """config.RECIPES[name]; a "+ckpt" suffix adds gradient checkpointing."""
    from unlearn_core.config import RECIPES

    name, _, extra = preset.partition("+")
    settings = dict(RECIPES[name])
    if extra == "ckpt":
        settings["gradient_checkpointing"] = True
    elif extra:
        raise SystemExit(f"unknown preset suffix +{extra} (only +ckpt)")
    return settings


def random_embeddings(seed: int = 1):
    """A concept and an empty-prompt embedding shaped like CLIP ViT-L/14's (1, 77, 768)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g)


def training_conditioning(emb_c, emb_e):
    from unlearn_core import Conditioning

    return Conditioning(concepts=[emb_c], empty=emb_e, trajectory=emb_c)


def timed_erase(den, cond, cfg, sync=lambda: None):
    """``erase`` with the seconds of each step (``sync`` waits for the device before a clock
    read); returns (result, seconds per step). Warm up first: the first steps pay for kernels."""
    from unlearn_core import erase

    times, last = [], [0.0]

    def cb(info) -> None:
        sync()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    sync()
    last[0] = time.perf_counter()
    return erase(den, cond, cfg, callback=cb), times


def run_side(side: str, latent: int, steps: int, preset: str) -> dict:
    import diffusers  # noqa: F401  (imported before the baseline: runtime, not model, memory)

    from unlearn_core import Conditioning, DiffusersDenoiser, EraseConfig, erase

    # The bare runtime (Python, torch, diffusers): every process pays it, model or not.
    runtime_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    unet = sd14_unet()
    emb_c, emb_e = random_embeddings()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    unet_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    flops = forward_flops(unet, latent)
    if side == "uce":
        den = DiffusersDenoiser(unet)
        cond = Conditioning(concepts=[emb_c], empty=emb_e, trajectory=emb_c,
                            concept_last_token=[5], guide_last_token=0)
        cfg = EraseConfig(concepts=("x",), method="uce")
        t0 = time.perf_counter()
        res = erase(den, cond, cfg)
        times = [time.perf_counter() - t0]
        return {"side": "uce", "latent": latent, "steps": 1, "seconds_total": times[0],
                "layers": res.metadata["layers"], "condition_number": res.metadata["condition_number"],
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "runtime_rss_bytes": runtime_rss, "unet_fp32_bytes": unet_bytes}
    if side == "reference":
        from reference_sdd import ReferenceSDD

        ref = ReferenceSDD(unet, DiffusersDenoiser(unet).alphas_cumprod, emb_c, emb_e, latent)
        ref.step(1)  # warm-up
        ref.unet_evals = 0
        times = ref.run(steps, stratified=True)
        nograd = ref.unet_evals - 2 * steps
        per_step_evals = ref.unet_evals / steps
        grad_per_step = 1
    else:
        den = DiffusersDenoiser(unet)
        cond = training_conditioning(emb_c, emb_e)
        cfg = EraseConfig(concepts=("x",), resolution=latent, steps=steps,
                          **preset_config(preset))
        erase(den, cond, cfg.replace(steps=1))  # warm-up
        res, times = timed_erase(den, cond, cfg)
        nograd = res.metadata["unet_evals_nograd"]
        grad_per_step = res.metadata["unet_evals_grad"] / steps
        per_step_evals = (nograd + res.metadata["unet_evals_grad"]) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    nograd_per_step = nograd / steps
    step_flops = flops * (nograd_per_step + 3 * grad_per_step)  # backward ~ 2 forwards
    return {
        "side": side, "latent": latent, "steps": steps,
        "unet_evals_per_step": per_step_evals,
        "seconds_per_step_mean": statistics.fmean(times),
        "seconds_per_step_median": statistics.median(times),
        "seconds_per_step_all": times,
        "peak_rss_bytes": peak, "rss_before_bytes": base_rss, "runtime_rss_bytes": runtime_rss,
        "unet_fp32_bytes": unet_bytes,
        "forward_flops": flops, "flops_per_step": step_flops,
        "floor_flops_per_step": flops * 4,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latent", type=int, nargs="+", default=[16])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--presets", nargs="+", default=["fast", "fast-lora"],
                    help="our engine's presets to time (config.RECIPES; NAME+ckpt adds gradient "
                         "checkpointing)")
    ap.add_argument("--no-reference", action="store_true", help="time only our presets")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.side:
        print(json.dumps(run_side(args.side, args.latent[0], args.steps, args.presets[0])))
        return
    rows = []
    for latent in args.latent:
        sides = [] if args.no_reference else [("reference", "-")]
        for side, preset in sides + [("ours", p) for p in args.presets]:
            cmd = [sys.executable, __file__, "--side", side, "--latent", str(latent),
                   "--steps", str(args.steps), "--presets", preset,
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env=os.environ | {"PYTHONWARNINGS": "ignore"})
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            r["side"] = "reference (SDD structure)" if side == "reference" else f"ours ({preset})"
            print(f"  {r['side']} latent {latent}: {r['seconds_per_step_mean']:.2f} s/step",
                  file=sys.stderr)
    print(f"UNet fp32 bytes: {rows[0]['unet_fp32_bytes'] / 2**30:.2f} GiB; bare runtime "
          f"(python, torch, diffusers, no model): {rows[0]['runtime_rss_bytes'] / 2**30:.2f} GiB\n")
    print("| latent | side | UNet evals/step | s/step (mean) | peak RSS GiB | peak / UNet fp32 | "
          "(peak − runtime) / UNet fp32 | GFLOP/step | × floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        unet = r["unet_fp32_bytes"]
        print(f"| {r['latent']}×{r['latent']} | {r['side']} | {r['unet_evals_per_step']:.1f} | "
              f"{r['seconds_per_step_mean']:.2f} | {r['peak_rss_bytes'] / 2**30:.2f} | "
              f"{r['peak_rss_bytes'] / unet:.2f} | "
              f"{(r['peak_rss_bytes'] - r['runtime_rss_bytes']) / unet:.2f} | "
              f"{r['flops_per_step'] / 1e9:.0f} | {r['flops_per_step'] / r['floor_flops_per_step']:.1f} |")
    for latent in [] if args.no_reference else args.latent:
        ref = next(r for r in rows if r["latent"] == latent and r["side"].startswith("reference"))
        for ours in (r for r in rows if r["latent"] == latent and r["side"].startswith("ours")):
            print(f"\nlatent {latent}: {ours['side']} / reference — UNet evals per step "
                  f"{ours['unet_evals_per_step'] / ref['unet_evals_per_step']:.3f}, seconds per "
                  f"step {ours['seconds_per_step_mean'] / ref['seconds_per_step_mean']:.3f}, "
                  f"peak RSS {ours['peak_rss_bytes'] / ref['peak_rss_bytes']:.3f}")
    out = subprocess.run([sys.executable, __file__, "--side", "uce", "--threads", str(args.threads)],
                         check=True, capture_output=True, text=True,
                         env=os.environ | {"PYTHONWARNINGS": "ignore"})
    uce = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nUCE (closed form, {uce['layers']} to_k/to_v layers, float64 solve) on the same UNet: "
          f"{uce['seconds_total']:.2f} s in all, condition number {uce['condition_number']:.3g}")
    rows.append(uce)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
