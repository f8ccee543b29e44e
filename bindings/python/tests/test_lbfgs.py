"""torch.optim.LBFGS through a file (FORMAT.md 5): its state lives under the
first parameter, numbers in the JSON state object and its lists of tensors
stacked (old_dirs/old_stps [n, N], ro [n], al's non-None prefix [k]); a
save and load resumes bit for bit, and a state that does not fit is refused
naming the key."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_saver import ModelContainer, read_checkpoint
from pytorch_saver._errors import FormatError
from pytorch_saver._state import optimizer_layout, optimizer_state_dict
from pytorch_saver.models import MLP
from torch import nn

MODEL_KWARGS = {"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}
OPTIM_KWARGS = {"line_search_fn": "strong_wolfe", "history_size": 3, "max_iter": 5}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn((16, 4), generator=gen), torch.randn((16, 3), generator=gen)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    x, y = data()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)


def same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, va in a.items():
        vb = b[key]
        if isinstance(va, list):
            assert len(va) == len(vb), key
            for x, y in zip(va, vb, strict=True):
                assert (x is None and y is None) or torch.equal(x, y), key
        elif isinstance(va, torch.Tensor):
            assert torch.equal(va, vb) and va.dtype == vb.dtype, key
        else:
            assert va == vb and type(va) is type(vb), key


def test_lbfgs_saves_stacked_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    container = ModelContainer()
    objs = container.initialize(MLP, MODEL_KWARGS, torch.optim.LBFGS, OPTIM_KWARGS)
    train(objs.model, objs.optimizer, 4)
    path = container.save(tmp_path, "half")

    with zipfile.ZipFile(path) as zf:
        internals = json.loads(zf.read("metadata.json"))["__pytorch_saver__"]["optimizer"]
    state = objs.optimizer.state_dict()["state"][0]
    values = internals["state"]["0"]
    assert values["func_evals"] == state["func_evals"] and values["n_iter"] == state["n_iter"]
    assert values["prev_loss"] == state["prev_loss"]
    tensors = read_checkpoint(path).optimizer
    numel = sum(p.numel() for p in objs.model.parameters())
    n = len(state["old_dirs"])
    assert 1 <= n <= 3
    assert tensors["state.0.old_dirs"].shape == (n, numel)
    assert tensors["state.0.old_stps"].shape == (n, numel)
    assert tensors["state.0.ro"].shape == (n,)
    assert tensors["state.0.al"].shape == (n,)
    assert tensors["state.0.d"].shape == (numel,)
    assert set(internals["state"]) == {"0"}

    _, loaded = ModelContainer().load(path)
    same_state(loaded.optimizer.state_dict()["state"][0], state)
    train(objs.model, objs.optimizer, 4)
    train(loaded.model, loaded.optimizer, 4)
    for (na, a), (nb, b) in zip(
        objs.model.named_parameters(), loaded.model.named_parameters(), strict=True
    ):
        assert na == nb and torch.equal(a, b), na
    same_state(loaded.optimizer.state_dict()["state"][0], objs.optimizer.state_dict()["state"][0])


@pytest.mark.parametrize(
    ("key", "shape"),
    [("old_dirs", (2, 5)), ("ro", (9,)), ("al", (4,)), ("d", (3,)), ("t", (2,))],
)
def test_an_lbfgs_state_that_does_not_fit_is_refused_naming_the_key(
    key: str, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = MLP(**MODEL_KWARGS)
    optimizer = torch.optim.LBFGS(model.parameters(), **OPTIM_KWARGS)
    train(model, optimizer, 3)
    section, tensors = optimizer_layout(optimizer, model, "torch.optim.LBFGS")
    tensors[f"state.0.{key}"] = torch.zeros(shape)
    fresh = torch.optim.LBFGS(model.parameters(), **OPTIM_KWARGS)
    with pytest.raises(FormatError, match=key):
        optimizer_state_dict(fresh, model, section, tensors)


def test_al_with_a_none_before_a_tensor_is_refused() -> None:
    model = nn.Linear(2, 1)
    optimizer = torch.optim.LBFGS(model.parameters())
    optimizer.state[model.weight].update(
        {"func_evals": 1, "n_iter": 1, "al": [None, torch.tensor(1.0), None]}
    )
    with pytest.raises(Exception, match="prefix"):
        optimizer_layout(optimizer, model, "torch.optim.LBFGS")
