"""Train the example CNN on Fashion-MNIST (CPU, seeded) and save its state_dict.

    python examples/fashion_mnist/train.py --epochs 6 --out-dir examples/fashion_mnist/out

>>> from train import train                                           # doctest: +SKIP
>>> model, info = train(epochs=6, out_dir="out")                      # doctest: +SKIP
>>> info["test_accuracy"]                                             # doctest: +SKIP
0.90...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import load_fashion_mnist  # noqa: E402
from model import make_model  # noqa: E402

__all__ = ["CHECKPOINT", "INFO", "evaluate", "train"]

CHECKPOINT = "fashion_cnn.pt"
INFO = "fashion_cnn.train.json"  # written beside the checkpoint: accuracy, time, load
HERE = Path(__file__).resolve().parent


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[i : i + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[i : i + batch_size]).sum())
    return correct / len(x)


def train(
    epochs: int = 6,
    out_dir: str | Path = HERE / "out",
    *,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 0.01,
    train_limit: int | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Train with AdamW + one-cycle LR and random horizontal flips; save ``out_dir/fashion_cnn.pt``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    if train_limit:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x_train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(x_train))
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            xb = x_train[idx]
            flip = rng.random(len(idx)) < 0.5
            xb[flip] = xb[flip][..., ::-1]
            xb, yb = torch.from_numpy(np.ascontiguousarray(xb)), torch.from_numpy(y_train[idx])
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if progress:
            acc = evaluate(model, x_test, y_test)
            print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x_train):.4f}, test accuracy {acc:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    model.eval()
    info = {
        "epochs": epochs,
        "seed": seed,
        "train_samples": len(x_train),
        "test_accuracy": evaluate(model, x_test, y_test),
        "train_s": time.perf_counter() - t0,
        "params": sum(p.numel() for p in model.parameters()),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out / CHECKPOINT)
    info["checkpoint"] = str(out / CHECKPOINT)
    info["load_avg_1min"] = os.getloadavg()[0]  # timings on a shared machine need this context
    info["threads"] = torch.get_num_threads()
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return model, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the Fashion-MNIST example CNN on CPU.")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out-dir", default=str(HERE / "out"), help="where fashion_cnn.pt goes (default: examples/fashion_mnist/out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args(argv)
    _, info = train(args.epochs, args.out_dir, seed=args.seed, batch_size=args.batch_size, lr=args.lr)
    print(f"test accuracy {info['test_accuracy']:.4f} after {info['epochs']} epochs in {info['train_s']:.0f} s "
          f"({info['params']} parameters); saved {info['checkpoint']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
