"""Concepts per hour against the number of data-parallel processes, on the toy world (CPU).

Runs the same erasure, ``unlearn erase --model toy`` with ``--concepts`` toy words erased together
and a global batch of ``--batch-size`` states per step, once as one process and once under
``torchrun --standalone --nproc_per_node 2`` (gloo), every process on one thread
(OMP_NUM_THREADS=1), one after the other. Each run's training time is the ``seconds`` its erasure
file records (the first process's loop, without starting Python and loading the model); the
wall time of the whole command is printed too. Concepts per hour = 3600 / (seconds per step x the
toy world's steps per concept, ``TOY_SETTINGS["steps"]``). The two runs' results are compared
(max abs difference of the written tensors).

    python benchmarks/distributed.py --steps 40 --concepts 4

GPU figures: run the same two commands with ``--device cuda`` on an SD-1.x folder on a machine
with GPUs (``torchrun --standalone --nproc_per_node N -m unlearn_core erase ...``); this script
reports whether a CUDA device was present and measures the CPU only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("cross", "red", "striped", "circle", "blue", "dotted", "triangle", "green")


def run_once(world: int, flags: list[str], out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = ([str(Path(sys.executable).with_name("torchrun")), "--standalone",
                 "--nproc_per_node", str(world)] if world > 1 else [sys.executable])
    start = time.perf_counter()
    subprocess.run([*launcher, "-m", "unlearn_core", *flags, "--output", str(out)], check=True,
                   env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    from unlearn_core.files import read_metadata

    meta = read_metadata(out)
    return {"world": world, "wall": wall, "train": float(meta["seconds"]),
            "evals": int(meta["unet_evals_nograd"]) + int(meta["unet_evals_grad"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--concepts", type=int, default=4, choices=range(1, len(WORDS) + 1))
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    import torch
    from safetensors.torch import load_file

    from unlearn_core.toyworld.settings import TOY_SETTINGS

    per_concept = TOY_SETTINGS["steps"]
    flags = ["erase", "--model", "toy", "--steps", str(args.steps), "--batch-size",
             str(args.batch_size), *[f for w in WORDS[:args.concepts] for f in ("--concept", w)]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            rows.append(run_once(world, flags, Path(tmp) / f"w{world}.safetensors"))
        a, b = (load_file(str(Path(tmp) / f"w{w}.safetensors")) for w in (1, 2))
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"toy world, {args.concepts} concepts, {args.steps} steps, global batch "
          f"{args.batch_size}, {per_concept} steps per concept; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print("| processes (1 thread each) | training s | s/step | concepts/hour | wall s (whole "
          "command) | UNet evals (all processes) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["cph"] = 3600 / (r["train"] / args.steps * per_concept)
        print(f"| {r['world']} | {r['train']:.2f} | {r['train'] / args.steps:.3f} | "
              f"{r['cph']:.0f} | {r['wall']:.1f} | {r['evals']} |")
    print(f"ratio 2 processes / 1: concepts/hour x{rows[1]['cph'] / rows[0]['cph']:.2f} "
          f"(training loop), x{rows[0]['wall'] / rows[1]['wall']:.2f} (whole command); max abs "
          f"difference of the results {diff:.2g}")
    print("GPU: " + (f"{torch.cuda.device_count()} CUDA device(s) present, not measured by this "
                     "script" if torch.cuda.is_available() else "no CUDA device on this machine; "
                     "not measured"))


if __name__ == "__main__":
    main()
