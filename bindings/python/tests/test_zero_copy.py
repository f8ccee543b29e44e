"""Zero-copy loads: tensors in a private, copy-on-write mapping of the file
that behave exactly as those of a copying load, and never change the file."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_saver import FormatError, ModelContainer, ModelObjects, read_checkpoint
from pytorch_saver.models import MLP, Sequential
from support import assert_same_model, assert_same_optimizer, batches
from torch import nn

MLP_KWARGS = {"in_dim": 4, "hidden_dim": 16, "n_classes": 3, "n_layers": 3}
BN_LAYERS: list[dict[str, Any]] = [
    {"type": "Linear", "in_features": 4, "out_features": 8},
    {"type": "BatchNorm1d", "num_features": 8},
    {"type": "ReLU"},
    {"type": "Linear", "in_features": 8, "out_features": 3},
]


def train(objs: ModelObjects, steps: int) -> list[torch.Tensor]:
    """``steps`` optimizer steps of MSE; the losses."""
    assert objs.optimizer is not None
    objs.model.train()
    losses = []
    for x, y in batches(steps):
        objs.optimizer.zero_grad()
        loss = (objs.model(x) - y).square().mean()
        loss.backward()
        objs.optimizer.step()
        losses.append(loss.detach())
    return losses


def saved(tmp_path: Path, cls: type[nn.Module], kwargs: dict[str, Any], optim: Any) -> str:
    torch.manual_seed(0)
    container = ModelContainer()
    objs = container.initialize(cls, kwargs, *optim)
    train(objs, 3)
    return container.save(tmp_path, "zc", epoch=3)


def file_state(path: str) -> tuple[int, bytes]:
    data = Path(path).read_bytes()
    return zlib.crc32(data), data


def mapped_storage(t: torch.Tensor, path: str) -> bool:
    return t.untyped_storage().nbytes() == os.path.getsize(path)


@pytest.mark.parametrize(
    ("cls", "kwargs", "optim"),
    [
        (MLP, MLP_KWARGS, (torch.optim.Adam, {"lr": 1e-2})),
        (Sequential, {"layers": BN_LAYERS}, (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})),
    ],
    ids=["mlp-adam", "sequential-batchnorm-sgd"],
)
def test_training_after_a_zero_copy_load_equals_a_copying_load_and_leaves_the_file(
    tmp_path: Path, cls: type[nn.Module], kwargs: dict[str, Any], optim: Any
) -> None:
    path = saved(tmp_path, cls, kwargs, optim)
    before = file_state(path)
    _, mapped = ModelContainer().load(path)
    _, copied = ModelContainer().load(path, copy=True)
    assert all(mapped_storage(t, path) for t in mapped.model.state_dict().values())
    assert not any(mapped_storage(t, path) for t in copied.model.state_dict().values())
    assert mapped.optimizer is not None and copied.optimizer is not None
    for state in mapped.optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                assert mapped_storage(value, path)
    losses_mapped = train(mapped, 10)
    losses_copied = train(copied, 10)
    assert all(torch.equal(a, b) for a, b in zip(losses_mapped, losses_copied, strict=True))
    assert_same_model(mapped.model, copied.model)
    assert_same_optimizer(mapped.optimizer, mapped.model, copied.optimizer, copied.model)
    assert file_state(path) == before


def test_writing_to_a_mapped_tensor_never_changes_the_file(tmp_path: Path) -> None:
    path = saved(tmp_path, MLP, MLP_KWARGS, (torch.optim.Adam, {"lr": 1e-2}))
    os.chmod(path, 0o444)  # a private mapping needs no write permission
    before = file_state(path)
    _, objs = ModelContainer().load(path)
    with torch.no_grad():
        for t in objs.model.state_dict().values():
            t.fill_(7)
    assert file_state(path) == before
    assert not torch.equal(
        read_checkpoint(path).model["fc1.weight"], objs.model.state_dict()["fc1.weight"]
    )


class Tied(nn.Module):
    """A language-model-like pair whose head shares the embedding's weight."""

    def __init__(self, vocab: int = 10, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.tanh(self.mid(self.embed(x))))
        return out


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(Tied, {"vocab": 10, "dim": 4}, torch.optim.Adam, {"lr": 0.1})
    path = container.save(tmp_path)
    _, objs = ModelContainer().load(path, Tied, torch.optim.Adam)
    model = objs.model
    assert isinstance(model, Tied)
    assert model.head.weight is model.embed.weight
    assert mapped_storage(model.embed.weight, path)
    assert objs.optimizer is not None
    params = objs.optimizer.param_groups[0]["params"]
    assert len(params) == len(list(model.parameters())) == 3
    assert sum(p is model.embed.weight for p in params) == 1
    x = torch.tensor([[1, 2, 3]])
    objs.optimizer.zero_grad()
    model(x).sum().backward()
    objs.optimizer.step()
    assert model.head.weight is model.embed.weight


class WithNonPersistent(nn.Module):
    """Buffers computed from the kwargs that the file does not hold."""

    freqs: torch.Tensor
    mask: torch.Tensor

    def __init__(self, dim: int = 4, base: float = 100.0) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.register_buffer("freqs", base ** (-torch.arange(dim) / dim), persistent=False)
        self.register_buffer("mask", torch.ones(dim, dtype=torch.bool), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x) * self.freqs
        return out


def test_non_persistent_buffers_are_computed_by_init(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(WithNonPersistent, {"dim": 4, "base": 50.0})
    path = container.save(tmp_path)
    assert set(read_checkpoint(path).model) == {"fc.weight", "fc.bias"}
    _, objs = ModelContainer().load(path, WithNonPersistent)
    model = objs.model
    assert isinstance(model, WithNonPersistent)
    assert torch.equal(model.freqs, 50.0 ** (-torch.arange(4) / 4))
    assert torch.equal(model.mask, torch.ones(4, dtype=torch.bool))
    assert_same_model(model, container.model)  # type: ignore[arg-type]


class HalfPrecision(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bf = nn.Linear(4, 4, dtype=torch.bfloat16)
        self.half = nn.Linear(4, 4, dtype=torch.float16)
        self.bn = nn.BatchNorm1d(4)


def test_batchnorm_buffers_and_half_precision_parameters_are_exact(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(HalfPrecision, {})
    model = container.model
    assert isinstance(model, HalfPrecision)
    with torch.no_grad():
        model.bn.running_mean.uniform_()
        model.bn.running_var.uniform_()
        model.bn.num_batches_tracked.fill_(17)
    path = container.save(tmp_path)
    _, mapped = ModelContainer().load(path, HalfPrecision)
    _, copied = ModelContainer().load(path, HalfPrecision, copy=True)
    for objs in (mapped, copied):
        state = objs.model.state_dict()
        for key, value in model.state_dict().items():
            assert state[key].dtype == value.dtype, key
            assert state[key].shape == value.shape, key
            bits = state[key].reshape(-1).view(torch.uint8)
            assert torch.equal(bits, value.reshape(-1).view(torch.uint8)), key


class NotMetaBuildable(nn.Module):
    """Computes a buffer from its parameter's values: built normally."""

    norm: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.register_buffer("norm", self.fc.weight.detach().norm().reshape(1), persistent=False)


def test_a_class_that_needs_its_parameters_in_init_still_loads(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(NotMetaBuildable, {})
    path = container.save(tmp_path)
    _, objs = ModelContainer().load(path, NotMetaBuildable)
    model = objs.model
    assert isinstance(model, NotMetaBuildable)
    assert not model.norm.is_meta
    assert_same_model(model, container.model)  # type: ignore[arg-type]
    assert mapped_storage(model.fc.weight, path)


def _flip(path: str, at: int) -> None:
    data = bytearray(Path(path).read_bytes())
    data[at] ^= 0x40
    Path(path).write_bytes(bytes(data))


def test_verify_detects_a_flipped_tensor_byte_and_verify_false_skips_it(tmp_path: Path) -> None:
    path = saved(tmp_path, MLP, MLP_KWARGS, (torch.optim.Adam, {"lr": 1e-2}))
    ckpt = read_checkpoint(path)
    weight = ckpt.model["fc1.weight"]
    data = Path(path).read_bytes()
    at = data.index(weight.numpy().tobytes())
    _flip(path, at + 1)
    with pytest.raises(FormatError, match=r"CRC-32 mismatch in model\.safetensors"):
        ModelContainer().load(path)
    with pytest.raises(FormatError, match=r"CRC-32 mismatch in model\.safetensors"):
        ModelContainer().load(path, copy=True)
    _, objs = ModelContainer().load(path, verify=False)
    assert not torch.equal(objs.model.state_dict()["fc1.weight"], weight)


def test_verify_false_still_checks_the_structure(tmp_path: Path) -> None:
    path = saved(tmp_path, MLP, MLP_KWARGS, (torch.optim.Adam, {"lr": 1e-2}))
    data = Path(path).read_bytes()
    at = data.index(b'"dtype":"F32"')
    Path(path).write_bytes(data[:at] + b'"dtype":"F99"' + data[at + 13 :])
    with pytest.raises(FormatError, match=r"model\.safetensors"):
        ModelContainer().load(path, verify=False)


def test_a_dtype_that_is_not_the_models_is_refused_before_building(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(MLP, MLP_KWARGS)
    assert container.model is not None
    container.model.double()
    path = container.save(tmp_path)
    with pytest.raises(Exception, match="fc1.weight") as info:
        ModelContainer().load(path)
    assert "float64" in str(info.value)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
        ),
    ],
)
def test_a_zero_copy_load_moves_to_the_device(tmp_path: Path, device: str) -> None:
    path = saved(tmp_path, MLP, MLP_KWARGS, (torch.optim.Adam, {"lr": 1e-2}))
    _, objs = ModelContainer().load(path, device=device)
    _, copied = ModelContainer().load(path, copy=True)
    assert objs.optimizer is not None and copied.optimizer is not None
    for p in objs.model.parameters():
        assert p.device.type == device
    for state in objs.optimizer.state.values():
        assert state["exp_avg"].device.type == device
    train(objs, 2)
    train(copied, 2)
    for a, b in zip(objs.model.parameters(), copied.model.parameters(), strict=True):
        torch.testing.assert_close(a.cpu(), b)


class OddBytes(nn.Module):
    """A 3-byte buffer that, written first, leaves the weight unaligned."""

    codes: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("codes", torch.tensor([1, 2, 3], dtype=torch.uint8))


def test_a_tensor_not_aligned_to_its_element_size_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytorch_saver._format import CheckpointReader, Dtype, tensors

    container = ModelContainer()
    container.initialize(OddBytes, {})
    # Another writer's order: uint8 data first (readers must not depend on it).
    u8 = tensors.DTYPES_BY_TORCH[torch.uint8]
    first = Dtype(u8.name, u8.torch_dtype, u8.size, 100)
    monkeypatch.setitem(tensors.DTYPES_BY_TORCH, torch.uint8, first)
    path = container.save(tmp_path)
    monkeypatch.undo()
    with CheckpointReader(path) as reader:
        entries = {t.name: t for t in reader.scan.model.tensors}
    assert entries["fc.bias"].start % 4 != 0
    _, objs = ModelContainer().load(path, OddBytes)
    assert_same_model(objs.model, container.model)  # type: ignore[arg-type]
    assert not mapped_storage(objs.model.fc.bias, path)
    assert mapped_storage(objs.model.codes, path)  # type: ignore[arg-type]
