"""A user's own MNIST classifier, to try vaecompress on a model it has never seen.

    python examples/my_mlp.py -o my_mlp.pt --epochs 1      # train it, save a checkpoint
    export PYTHONPATH=examples                             # so that --arch finds my_mlp
    vaecompress evaluate my_mlp.pt --arch my_mlp:MyMLP
    vaecompress compress my_mlp.pt -o my_mlp.vrd --codec vae-rd --finetune --arch my_mlp:MyMLP
    vaecompress decompress my_mlp.vrd -o rebuilt.safetensors
    vaecompress evaluate rebuilt.safetensors --arch my_mlp:MyMLP

`MyMLP` takes images [N, 1, 28, 28] with values in [0, 1] (no normalization: vaecompress's
default for --arch) and returns logits [N, 10]. Its BatchNorm layer brings buffers: float
running statistics and the int64 `num_batches_tracked`. The checkpoint nests the state_dict
under "model" beside the epoch count and the settings, as many training scripts do;
vaecompress finds it there.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MyMLP(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 1,
          batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Adam on cross-entropy; returns each epoch's mean loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(images))
    return losses


def main(argv: Sequence[str] | None = None) -> None:
    from vaecompress.data import load_mnist, to_tensors

    p = argparse.ArgumentParser(description="Train MyMLP on MNIST and save a checkpoint.")
    p.add_argument("-o", "--output", default="my_mlp.pt", help="checkpoint to write")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--data-dir", help="MNIST IDX files (default: vaecompress's cached copy)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    train_split, _ = load_mnist(args.data_dir)
    images, labels = to_tensors(train_split, normalize=None)  # [N, 1, 28, 28] in [0, 1]
    model = MyMLP(args.hidden)
    losses = train(model, images, labels, epochs=args.epochs, seed=args.seed)
    torch.save({"model": model.state_dict(), "epoch": args.epochs, "hidden": args.hidden},
               args.output)
    print(f"saved {args.output} (loss {losses[-1]:.4f} after {args.epochs} epochs)")


if __name__ == "__main__":
    main()
