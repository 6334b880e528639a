"""Train the toy text-to-image model from scratch on CPU and write it as one safetensors asset.

    python scripts/train_toy_model.py                      # defaults: seed 0, 4000 steps
    python scripts/train_toy_model.py --resume             # continue from the last checkpoint

DDPM ε-prediction (Ho et al. 2020) under SD's scaled-linear β schedule, text encoder and UNet
trained together, 10% of captions dropped to "" for classifier-free guidance (Ho & Salimans 2022).
The written weights are an EMA of the trained ones (decay 0.999, warmed up), which samples better
than the raw weights. A checkpoint (EMA model + resumable state) is written every
``--checkpoint-every`` steps into ``--work-dir``, so a partial run is usable.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unlearn_core.toyworld.dataset import make_batch  # noqa: E402
from unlearn_core.toyworld.hashes import ASSETS_DIR, record_hash, sha256  # noqa: E402
from unlearn_core.toyworld.model import new_toy_model, save_toy_model  # noqa: E402


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay from lr to lr * final_lr_ratio."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    ratio = args.final_lr_ratio + (1 - args.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr * ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--final-lr-ratio", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "toy_model_train")
    parser.add_argument("--out", type=Path, default=ASSETS_DIR / "toy_model.safetensors")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float16",
                        help="storage dtype of the written asset (loaded back as float32)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--exclude", default="", metavar="WORD",
                        help="leave every image of this shape, colour or texture out of training "
                        "(a control model that never saw the concept; benchmarks/red_team.py)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    excluded = None
    if args.exclude:
        from unlearn_core.toyworld.evaluate import concept_axis

        excluded = concept_axis(args.exclude)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    state_path = args.work_dir / "state.pt"

    model = new_toy_model()
    modules = torch.nn.ModuleDict({"text_encoder": model.text_encoder, "unet": model.unet})
    ema = copy.deepcopy(modules).requires_grad_(False)
    optimizer = torch.optim.AdamW(modules.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.01)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    noise_gen = torch.Generator().manual_seed(args.seed + 2)
    alphas_cumprod = model.alphas_cumprod  # (1000,)
    start, elapsed_before = 0, 0.0
    if args.resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        modules.load_state_dict(state["modules"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        data_gen.set_state(state["data_gen"])
        noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])
        start, elapsed_before = state["step"], state["elapsed"]
        print(f"resumed at step {start}", flush=True)
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}
    print(f"params: {n_params}", flush=True)

    def write(path: Path, step: int, elapsed: float, dtype: torch.dtype) -> None:
        ema_model = copy.copy(model)
        ema_model.text_encoder, ema_model.unet = ema["text_encoder"], ema["unet"]
        info = {"training": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                             "step": step, "seconds": round(elapsed, 1), "torch": torch.__version__}}
        save_toy_model(ema_model, path, dtype=dtype, extra=info)

    t0 = time.time()
    running = 0.0
    modules.train()
    for step in range(start, args.steps):
        batch = make_batch(args.batch_size, generator=data_gen)
        drop = torch.rand(args.batch_size, generator=data_gen) < args.caption_dropout
        captions = ["" if d else c for d, c in zip(drop.tolist(), batch.captions)]
        x0 = batch.images  # (B, 3, 16, 16)
        if excluded is not None:
            keep = batch.labels()[excluded[0]] != excluded[1]
            x0 = x0[keep]
            captions = [c for c, k in zip(captions, keep.tolist()) if k]
        noise = torch.randn(x0.shape, generator=noise_gen)
        t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=noise_gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise

        context = model.text_encoder(model.tokenizer(captions))  # (B, L, D)
        eps_pred = model.unet(x_t, t, encoder_hidden_states=context).sample
        loss = F.mse_loss(eps_pred, noise)

        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        # EMA with warm-up (decay grows from 0.1 toward ema_decay), so early checkpoints are usable
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), modules.parameters()):
                p_ema.lerp_(p, 1 - decay)

        running += loss.item()
        done = step + 1
        elapsed = elapsed_before + time.time() - t0
        if done % 50 == 0:
            print(f"step {done} loss {running / 50:.4f} lr {lr_at(step, args):.2e} {elapsed:.0f}s", flush=True)
            running = 0.0
        if done % args.checkpoint_every == 0 or done == args.steps:
            write(args.work_dir / "toy_model_ema.safetensors", done, elapsed, torch.float32)
            torch.save(
                {"modules": modules.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                 "data_gen": data_gen.get_state(), "noise_gen": noise_gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "step": done, "elapsed": elapsed},
                state_path,
            )
            print(f"checkpoint at step {done}", flush=True)

    final_dtype = torch.float16 if args.dtype == "float16" else torch.float32
    final_step = max(start, args.steps)
    write(args.out, final_step, elapsed_before + time.time() - t0, final_dtype)
    if args.out.parent.resolve() == ASSETS_DIR:
        digest = record_hash(args.out, script="scripts/train_toy_model.py", seed=args.seed, steps=final_step,
                             dtype=args.dtype)
    else:
        digest = sha256(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {digest}", flush=True)


if __name__ == "__main__":
    main()
