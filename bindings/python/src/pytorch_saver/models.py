"""Built-in models: classes every pytorch-saver implementation knows by name,
so that a file naming one loads in Python, Rust, C++ and Go with no user code.

``MLP`` is recorded as ``pytorch_saver.models.MLP``; its state-dict names are
those of the Rust core's ``Mlp`` (``src/models.rs``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """The multilayer perceptron of the original pytorch-saver tutorial.

    ``fc1`` maps ``in_dim`` to ``hidden_dim``; ``hidden_layers`` is a
    Sequential of ``n_layers - 1`` hidden Linear layers each followed by a
    ReLU (the ReLUs hold the odd indices), then a Linear to ``n_classes`` at
    index ``2 * (n_layers - 1)``. State-dict keys: ``fc1.weight``,
    ``fc1.bias``, ``hidden_layers.0.weight``, ``hidden_layers.0.bias``, ...
    """

    def __init__(self, in_dim: int, hidden_dim: int, n_classes: int, n_layers: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        layers: list[nn.Module] = []
        for _ in range(n_layers - 1):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        layers.append(nn.Linear(hidden_dim, n_classes))
        self.hidden_layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.hidden_layers(torch.relu(self.fc1(x)))
        return out
