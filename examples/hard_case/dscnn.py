"""A depthwise-separable (MobileNet-style) CNN for Fashion-MNIST, the network of the hard case.

>>> from dscnn import make_model
>>> net = make_model()
>>> sum(p.numel() for p in net.parameters()) < 30_000
True

Depthwise 3x3 convolutions have 9 weights per output channel; after BatchNorm folding their
per-channel ranges differ widely, which is what makes coarse weight quantization (4-bit, or one
scale per tensor) lose accuracy after training, and what quantization-aware training repairs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DSCNN", "make_model"]


def _dw_sep(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(),
    )


class DSCNN(nn.Module):
    """(N, 1, 28, 28) normalised images -> (N, 10) logits."""

    def __init__(self, classes: int = 10, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())  # 14
        self.blocks = nn.Sequential(
            _dw_sep(width, 2 * width, 1),        # 14
            _dw_sep(2 * width, 2 * width, 2),    # 7
            _dw_sep(2 * width, 4 * width, 1),    # 7
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def make_model() -> DSCNN:
    return DSCNN()
