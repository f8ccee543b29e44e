"""Classes the typed-kwargs tests pass as kwargs. They live in a module of
their own, imported by the tests, so that the file's class names
(``typed_models.Widths``) resolve by name as a user's would."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Widths:
    """A dataclass kwarg: the hidden widths and the activation class."""

    hidden: tuple[int, ...]
    activation: type[nn.Module] = nn.ReLU
    dropout: float = 0.0
    derived: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.derived = sum(self.hidden)


class TypedNet(nn.Module):
    """A model whose kwargs hold a dataclass, a tuple and a torch.dtype."""

    def __init__(
        self,
        in_dim: int,
        widths: Widths,
        out_shape: tuple[int, int],
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in widths.hidden:
            layers += [nn.Linear(prev, width, dtype=dtype), widths.activation()]
            if widths.dropout:
                layers.append(nn.Dropout(widths.dropout))
            prev = width
        layers.append(nn.Linear(prev, out_shape[0] * out_shape[1], dtype=dtype))
        self.body = nn.Sequential(*layers)
        self.out_shape = out_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out.reshape(-1, *self.out_shape)


class Interval:
    """A user type saved through a registered codec."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interval) and (self.low, self.high) == (other.low, other.high)

    def __hash__(self) -> int:
        return hash((self.low, self.high))


class ClampedLinear(nn.Linear):
    """A model with a codec-encoded kwarg."""

    def __init__(self, in_features: int, out_features: int, clamp: Interval) -> None:
        super().__init__(in_features, out_features)
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).clamp(self.clamp.low, self.clamp.high)


class NotADataclass:
    """Named by a doctored file as a dataclass: must be refused uncalled."""

    calls = 0

    def __init__(self, **kwargs: object) -> None:
        NotADataclass.calls += 1
