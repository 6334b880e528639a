"""Concepts per hour against the number of data-parallel processes, on the toy world (CPU).

Runs the same erasure, ``unlearn erase --model toy`` with ``--concepts`` toy words erased together,
as one process and under ``torchrun --standalone --nproc_per_node 2`` (gloo), every process on one
thread (OMP_NUM_THREADS=1), one run after the other, in two layouts of the same global batch
(``--batch-size`` x ``--trajectories`` states a step):

- ``trajectories_per_step`` = ``--trajectories`` (2) groups of ``--batch-size`` states: on 2
  processes each samples and trains only its own trajectory (the scale-out path);
- ``trajectories_per_step`` = 1, one group of ``--batch-size`` x ``--trajectories`` states: on 2
  processes every process samples the one trajectory and trains half its states (the slot split).

Each run's training time is the ``seconds`` its erasure file records (the first process's loop,
without starting Python and loading the model); the wall time of the whole command is printed
too. Concepts per hour = 3600 / (seconds per step x the toy world's steps per concept,
``TOY_SETTINGS["steps"]``), the same steps per concept for both layouts (same global batch). The
UNet evaluations are each process's (``unet_evals_per_process``), the sampling ones apart. The 1-
and 2-process results of a layout are compared (max abs difference of the written tensors).

    python benchmarks/distributed.py --steps 40 --concepts 4

GPU figures: run the same commands with ``--device cuda`` on an SD-1.x folder on a machine with
GPUs (``torchrun --standalone --nproc_per_node N -m unlearn_core erase ... --trajectories-per-step
N``); this script reports whether a CUDA device was present and measures the CPU only.
"""

from __future__ import annotations

import argparse
import json
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
    per = meta.get("unet_evals_per_process")
    per = json.loads(per) if isinstance(per, str) else per
    if per is None:
        per = [{k: int(meta[f"unet_evals_{k}"]) for k in ("nograd", "grad", "sampling")}]
    return {"world": world, "wall": wall, "train": float(meta["seconds"]), "per": per}


def layouts(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(name, trajectories_per_step, batch_size) of each layout of the same global batch."""
    g = args.trajectories
    return [(f"{g} trajectories/step x {args.batch_size} states", g, args.batch_size),
            (f"1 trajectory/step x {g * args.batch_size} states (slot split)", 1,
             g * args.batch_size)]


def measure(args: argparse.Namespace, tmp: Path) -> list[dict]:
    from safetensors.torch import load_file

    words = [f for w in WORDS[:args.concepts] for f in ("--concept", w)]
    rows = []
    for name, g, batch in layouts(args):
        flags = ["erase", "--model", "toy", "--steps", str(args.steps), "--batch-size",
                 str(batch), "--trajectories-per-step", str(g), *words]
        pair = [run_once(world, flags, tmp / f"g{g}w{world}.safetensors") for world in (1, 2)]
        a, b = (load_file(str(tmp / f"g{g}w{w}.safetensors")) for w in (1, 2))
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        rows.append({"name": name, "runs": pair, "diff": diff})
    return rows


def report(args: argparse.Namespace, rows: list[dict], load: tuple[float, float]) -> None:
    import torch

    from unlearn_core.toyworld.settings import TOY_SETTINGS

    per_concept = TOY_SETTINGS["steps"]
    print(f"toy world, {args.concepts} concepts, {args.steps} steps, global batch "
          f"{args.trajectories * args.batch_size} states, {per_concept} steps per concept; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} before, {load[1]:.2f} after")
    print("| layout | processes (1 thread each) | s/step | concepts/hour | ratio 2/1 | wall s "
          "(whole command) | UNet evals per process (sampling + other no-grad, grad) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        base = None
        for r in row["runs"]:
            cph = 3600 / (r["train"] / args.steps * per_concept)
            base = base or cph
            evals = "; ".join(f"{p['sampling']} + {p['nograd'] - p['sampling']}, {p['grad']}"
                              for p in r["per"])
            ratio = f"x{cph / base:.2f}" if r["world"] > 1 else ""
            print(f"| {row['name']} | {r['world']} | {r['train'] / args.steps:.3f} | {cph:.0f} | "
                  f"{ratio} | {r['wall']:.1f} | {evals} |")
    print("max abs difference of the results, 1 vs 2 processes: " + ", ".join(
        f"{row['name']}: {row['diff']:.2g}" for row in rows))
    print("GPU: " + (f"{torch.cuda.device_count()} CUDA device(s) present, not measured by this "
                     "script" if torch.cuda.is_available() else "no CUDA device on this machine; "
                     "not measured"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--concepts", type=int, default=4, choices=range(1, len(WORDS) + 1))
    parser.add_argument("--batch-size", type=int, default=2, help="states per trajectory")
    parser.add_argument("--trajectories", type=int, default=2,
                        help="trajectories per step (a multiple of 2: one per process and more)")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args, Path(tmp))
    report(args, rows, (before, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
