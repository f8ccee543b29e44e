"""Models and helpers shared by the package's tests. Classes here are recorded
as ``support.X``, which resolves by name because the tests import this
module before loading."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pytorch_saver import ModelObjects, read_checkpoint
from pytorch_saver._format import write_checkpoint
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

# Format v1's dtypes (FORMAT.md section 4).
DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]

MODEL_KWARGS: dict[str, Any] = {"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}


class Model(nn.Module):
    """The dummy model of the original package's tests."""

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


class Forward(nn.Module):
    """Two layers, ``a`` created before ``b``: parameters() is a then b."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.b = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.b(torch.tanh(self.a(x)))
        return out


class Backward(Forward):
    """The same state-dict names as Forward, parameters created b first."""

    def __init__(self, dim: int = 4) -> None:
        nn.Module.__init__(self)
        self.b = nn.Linear(dim, 2)
        self.a = nn.Linear(dim, dim)


class BufferB(Forward):
    """Forward's state-dict names, but ``b.weight`` is a buffer, not a
    parameter: the optimizer state for it has no parameter to go to."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__(dim)
        weight = self.b.weight.detach().clone()
        del self.b.weight
        self.b.register_buffer("weight", weight)


class ScaledForward(Forward):
    """Forward with a buffer ``scale``."""

    scale: torch.Tensor

    def __init__(self, dim: int = 4) -> None:
        super().__init__(dim)
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class ScaleParameter(ScaledForward):
    """ScaledForward's state-dict names, but ``scale`` is a parameter: one
    more parameter than the saved optimizer state covers."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__(dim)
        del self.scale
        self.scale = nn.Parameter(torch.ones(2))


class SwappedParameter(ScaledForward):
    """ScaledForward's state-dict names and parameter count, but ``scale`` is
    a parameter and ``b.weight`` a buffer."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__(dim)
        del self.scale
        self.scale = nn.Parameter(torch.ones(2))
        weight = self.b.weight.detach().clone()
        del self.b.weight
        self.b.register_buffer("weight", weight)


def batches(n: int, in_dim: int = 4, out_dim: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1234)
    return [
        (torch.randn(8, in_dim, generator=gen), torch.randn(8, out_dim, generator=gen))
        for _ in range(n)
    ]


def train(objs: ModelObjects, data: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """One optimizer and scheduler step per batch, MSE loss."""
    assert objs.optimizer is not None
    for x, y in data:
        objs.optimizer.zero_grad()
        loss = (objs.model(x) - y).square().mean()
        loss.backward()
        objs.optimizer.step()
        if isinstance(objs.scheduler, ReduceLROnPlateau):
            objs.scheduler.step(loss.item())
        elif objs.scheduler is not None:
            objs.scheduler.step()


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def optimizer_state_by_name(
    optimizer: torch.optim.Optimizer, model: nn.Module
) -> dict[str, dict[str, Any]]:
    """Each parameter's optimizer state under the parameter's model name."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: dict(s) for p, s in optimizer.state.items()}


def assert_same_optimizer(
    a: torch.optim.Optimizer, model_a: nn.Module, b: torch.optim.Optimizer, model_b: nn.Module
) -> None:
    assert type(a) is type(b)
    sa, sb = optimizer_state_by_name(a, model_a), optimizer_state_by_name(b, model_b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].keys() == sb[name].keys(), name
        for key, value in sa[name].items():
            other = sb[name][key]
            if isinstance(value, torch.Tensor):
                assert value.dtype == other.dtype, (name, key)
                assert torch.equal(value, other), (name, key)
            else:
                assert value == other, (name, key)
    ga = [{k: v for k, v in g.items() if k != "params"} for g in a.param_groups]
    gb = [{k: v for k, v in g.items() if k != "params"} for g in b.param_groups]
    assert ga == gb


def assert_same_objects(a: ModelObjects, b: ModelObjects) -> None:
    assert type(a.model) is type(b.model)
    assert_same_model(a.model, b.model)
    assert (a.optimizer is None) == (b.optimizer is None)
    if a.optimizer is not None and b.optimizer is not None:
        assert_same_optimizer(a.optimizer, a.model, b.optimizer, b.model)
        assert a.optimizer.state_dict()["param_groups"] == b.optimizer.state_dict()["param_groups"]
    assert type(a.scheduler) is type(b.scheduler)
    if a.scheduler is not None and b.scheduler is not None:
        assert a.scheduler.state_dict() == b.scheduler.state_dict()


def rewrite_class(path: str, kind: str, name: str, directory: Path) -> str:
    """A copy of the checkpoint at ``path`` whose ``kind`` class is ``name``."""
    ckpt = read_checkpoint(path)
    metadata = json.loads(json.dumps(ckpt.metadata))
    metadata["__pytorch_saver__"][kind]["class"] = name
    optimizer = ckpt.optimizer if "optimizer" in metadata["__pytorch_saver__"] else None
    directory.mkdir(parents=True, exist_ok=True)
    return write_checkpoint(str(directory), "rewritten", metadata, ckpt.model, optimizer)


def write_legacy(path: Path, metadata: dict[str, Any], state_dicts: dict[str, Any]) -> Path:
    """A file as the original package (0.1.x) wrote it: a deflated zip of
    metadata.json and a pickle of the state dicts."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED, False) as zf:
        zf.writestr("metadata.json", json.dumps(metadata, indent=2))
        zf.writestr("state_dicts.pkl", pickle.dumps(state_dicts))
    path.write_bytes(buffer.getvalue())
    return path
