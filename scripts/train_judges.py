"""Train the toy world's judges (shape with a "none" reject class, colour, texture) on CPU.

    python scripts/train_judges.py            # seed 0; writes unlearn_core/toyworld/assets/judges.safetensors

Training images are drawn fresh every step from the procedural dataset (and, for the shape judge,
25% rejects from ``make_rejects``) and lightly corrupted (brightness, offset, noise, blur) so the
judges stay right on generated images, which are never pixel-perfect. Held-out accuracy is
measured on clean images from a seed never used in training and written into the file's metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unlearn_core.toyworld.dataset import corrupt, make_batch, make_rejects  # noqa: E402
from unlearn_core.toyworld.hashes import ASSETS_DIR, record_hash, sha256  # noqa: E402
from unlearn_core.toyworld.judges import JUDGE_CLASSES, new_judges, save_judges  # noqa: E402

REJECT_FRACTION = 0.25
HELD_OUT_SEED = 10_000


def shape_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n_reject = int(n * REJECT_FRACTION)
    batch = make_batch(n - n_reject, generator=g)
    rejects = make_rejects(n_reject, generator=g)
    images = torch.cat([batch.images, rejects])
    labels = torch.cat([batch.shape, torch.full((n_reject,), len(JUDGE_CLASSES["shape"]) - 1)])
    return images, labels


@torch.no_grad()
def held_out_accuracy(judges: dict, n: int = 4000, seed: int = HELD_OUT_SEED) -> dict[str, float]:
    batch = make_batch(n, seed=seed)
    rejects = make_rejects(n // 4, seed=seed + 1)
    acc = {}
    for axis, judge in judges.items():
        judge.eval()
        acc[axis] = (judge(batch.images).argmax(-1) == batch.labels()[axis]).float().mean().item()
    none = len(JUDGE_CLASSES["shape"]) - 1
    acc["shape_reject"] = (judges["shape"](rejects).argmax(-1) == none).float().mean().item()
    acc["shape_corrupted"] = (
        judges["shape"](corrupt(batch.images, torch.Generator().manual_seed(seed + 2))).argmax(-1) == batch.shape
    ).float().mean().item()
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape-steps", type=int, default=1500)
    parser.add_argument("--colour-steps", type=int, default=300)
    parser.add_argument("--texture-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ASSETS_DIR / "judges.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    steps = {"shape": args.shape_steps, "colour": args.colour_steps, "texture": args.texture_steps}
    judges = new_judges()
    t0 = time.time()
    for k, (axis, judge) in enumerate(judges.items()):
        g = torch.Generator().manual_seed(args.seed * 100 + k + 1)
        opt = torch.optim.AdamW(judge.parameters(), lr=args.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps[axis], pct_start=0.1)
        judge.train()
        for step in range(steps[axis]):
            if axis == "shape":
                images, labels = shape_batch(args.batch_size, g)
            else:
                batch = make_batch(args.batch_size, generator=g)
                images, labels = batch.images, batch.labels()[axis]
            loss = F.cross_entropy(judge(corrupt(images, g)), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if (step + 1) % 250 == 0:
                print(f"{axis} step {step + 1} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    acc = held_out_accuracy(judges)
    seconds = time.time() - t0
    print("held-out accuracy:", json.dumps(acc), f"({seconds:.0f}s)", flush=True)
    info = {"training": {"script": "scripts/train_judges.py", "seed": args.seed, "steps": steps,
                         "batch_size": args.batch_size, "lr": args.lr, "seconds": round(seconds, 1)},
            "held_out_accuracy": acc}
    save_judges(judges, args.out, extra=info)
    if args.out.parent.resolve() == ASSETS_DIR:
        digest = record_hash(args.out, script="scripts/train_judges.py", seed=args.seed, steps=steps)
    else:
        digest = sha256(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {digest}", flush=True)


if __name__ == "__main__":
    main()
