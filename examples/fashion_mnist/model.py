"""A small CNN for Fashion-MNIST (~24k parameters; ~90% test accuracy after a few epochs on CPU).

>>> from model import make_model
>>> net = make_model()
>>> sum(p.numel() for p in net.parameters())
24058

Conv-BN-ReLU blocks, so the exported graph is the Conv/Relu/MaxPool/GlobalAveragePool/Gemm mix
that static QDQ quantization handles well on CPU (BatchNorm folds into the Conv at export).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FashionCNN", "make_model"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FashionCNN(nn.Module):
    """(N, 1, 28, 28) normalised images -> (N, 10) logits."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _block(1, 16), nn.MaxPool2d(2),    # 28 -> 14
            _block(16, 32), nn.MaxPool2d(2),   # 14 -> 7
            _block(32, 64),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def make_model() -> FashionCNN:
    """Factory for ``onnxq export examples/fashion_mnist/model.py:make_model --input-shape 1x1x28x28``."""
    return FashionCNN()
