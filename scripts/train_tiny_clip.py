"""Train the toy world's tiny CLIP (open_clip architecture, custom config) contrastively on CPU.

    python scripts/train_tiny_clip.py         # seed 0; writes unlearn_core/toyworld/assets/tiny_clip.safetensors

Images and captions are drawn fresh every step from the procedural dataset (all phrasings, so
captions that leave colour or texture out are learnt too); images are lightly corrupted as for
the judges. Held-out checks on a seed never used in training: the true caption must beat the same
caption with its shape (or colour, or texture) swapped, and beat a random caption; retrieval
among the 48 full captions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unlearn_core.toyworld.clip import (  # noqa: E402
    caption_matches,
    contrastive_loss,
    new_tiny_clip,
    save_tiny_clip,
    tiny_clip_tokenizer,
)
from unlearn_core.toyworld.dataset import AXES, caption, corrupt, make_batch  # noqa: E402
from unlearn_core.toyworld.hashes import ASSETS_DIR, record_hash, sha256  # noqa: E402

HELD_OUT_SEED = 20_000


@torch.no_grad()
def held_out_metrics(model: torch.nn.Module, tokenizer, n: int = 1000, seed: int = HELD_OUT_SEED) -> dict:
    model.eval()
    batch = make_batch(n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    labels = {a: batch.labels()[a].tolist() for a in AXES}
    true = [caption(s, c, t) for s, c, t in zip(labels["shape"], labels["colour"], labels["texture"])]
    image_feat = model.encode_image(batch.images, normalize=True)  # (n, E)

    def score(texts: list[str]) -> torch.Tensor:
        return (image_feat * model.encode_text(tokenizer(texts), normalize=True)).sum(-1)

    s_true = score(true)
    out = {}
    for k, axis in enumerate(AXES):
        swapped = []
        for i in range(n):
            lab = [labels["shape"][i], labels["colour"][i], labels["texture"][i]]
            size = len(AXES[axis])
            lab[k] = (lab[k] + 1 + int(torch.randint(0, size - 1, (1,), generator=g))) % size
            swapped.append(caption(*lab))
        out[f"beats_{axis}_swapped"] = (s_true > score(swapped)).float().mean().item()
    perm = torch.randperm(n, generator=g)
    random_captions = [true[int(j)] for j in perm]
    differs = torch.tensor([a != b for a, b in zip(true, random_captions)])
    out["beats_random_caption"] = (s_true > score(random_captions))[differs].float().mean().item()
    combos = [(s, c, t) for s in range(4) for c in range(4) for t in range(3)]
    all_feat = model.encode_text(tokenizer([caption(*x) for x in combos]), normalize=True)  # (48, E)
    best = (image_feat @ all_feat.T).argmax(-1)
    target = torch.tensor([combos.index((s, c, t)) for s, c, t in
                           zip(labels["shape"], labels["colour"], labels["texture"])])
    out["retrieval_top1_of_48"] = (best == target).float().mean().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ASSETS_DIR / "tiny_clip.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = new_tiny_clip()
    tokenizer = tiny_clip_tokenizer()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params: {n_params}", flush=True)
    # no weight decay on the token table: only ~20 of its 49k rows ever get a gradient
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "token_embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "token_embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.time()
    model.train()
    for step in range(args.steps):
        batch = make_batch(args.batch_size, generator=g)
        images = corrupt(batch.images, g)
        match = caption_matches(list(batch.captions), batch.labels())  # (B, B)
        image_feat, text_feat, logit_scale = model(images, tokenizer(list(batch.captions)))
        loss = contrastive_loss(image_feat, text_feat, logit_scale, match)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # as in CLIP: scale at most 100
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    metrics = held_out_metrics(model, tokenizer)
    seconds = time.time() - t0
    print("held-out:", json.dumps(metrics), f"({seconds:.0f}s)", flush=True)
    info = {"training": {"script": "scripts/train_tiny_clip.py", "seed": args.seed, "steps": args.steps,
                         "batch_size": args.batch_size, "lr": args.lr, "seconds": round(seconds, 1),
                         "torch": torch.__version__},
            "held_out": metrics}
    save_tiny_clip(model, args.out, extra=info)
    if args.out.parent.resolve() == ASSETS_DIR:
        digest = record_hash(args.out, script="scripts/train_tiny_clip.py", seed=args.seed, steps=args.steps,
                             dtype="float16")
    else:
        digest = sha256(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {digest}", flush=True)


if __name__ == "__main__":
    main()
