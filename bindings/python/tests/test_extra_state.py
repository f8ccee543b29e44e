"""Extra training state (docs/FORMAT.md 11.3): tracked objects are saved
with a checkpoint in the built-in layouts and restored into the objects
given, by name and class, all or nothing."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pytorch_saver import (
    RNG,
    ArgumentTypeError,
    Counters,
    MetadataError,
    ModelContainer,
    StateMismatchError,
    read_checkpoint,
)
from torch import nn


class Schedule:
    """A user object with state_dict()/load_state_dict()."""

    def __init__(self) -> None:
        self.table = torch.zeros(3)
        self.pairs: dict[int, tuple[int, float]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table.clone(), "pairs": dict(self.pairs), "nested": [self.table * 2]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["pairs"].get(-1) == "boom":
            raise RuntimeError("refused")
        self.table = state["table"].clone()
        self.pairs = dict(state["pairs"])


def tracked_container() -> tuple[ModelContainer, dict[str, Any]]:
    container = ModelContainer()
    container.initialize(
        nn.Linear, {"in_features": 2, "out_features": 2}, torch.optim.SGD, {"lr": 0.1}
    )
    schedule = Schedule()
    schedule.table = torch.tensor([1.0, 2.0, 3.0])
    schedule.pairs = {3: (4, 0.5)}
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    objects = {
        "rng": RNG(),
        "gen": torch.Generator().manual_seed(5),
        "scaler": scaler,
        "counters": Counters(step=7, epoch=2),
        "schedule": schedule,
    }
    for name, obj in objects.items():
        assert container.track(name, obj) is obj
    return container, objects


def raw_metadata(path: str) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        out: dict[str, Any] = json.loads(zf.read("metadata.json"))
    return out


def test_the_built_in_layouts(tmp_path: Path) -> None:
    container, objects = tracked_container()
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    path = container.save(tmp_path)
    extra = raw_metadata(path)["__pytorch_saver__"]["extra"]
    assert {n: e["class"] for n, e in extra.items()} == {
        "rng": "pytorch_saver.RNG",
        "gen": "torch.Generator",
        "scaler": "torch.amp.GradScaler",
        "counters": "pytorch_saver.Counters",
        "schedule": "test_extra_state.Schedule",
    }
    rng = extra["rng"]["state"]
    assert rng["torch"] == {"cpu": {"__type__": "tensor", "name": "rng.torch.cpu"}}
    version, words, gauss = rng["python"]["items"]
    assert version == 3 and gauss is None and len(words["items"]) == 625
    assert rng["numpy"]["bit_generator"] == "MT19937"
    assert len(rng["numpy"]["state"]["key"]) == 624
    assert extra["gen"]["state"] == {"state": {"__type__": "tensor", "name": "gen.state"}}
    assert extra["scaler"]["state"] == {
        "scale": 256.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 0,
    }
    assert extra["counters"]["state"] == {"step": 7, "epoch": 2}
    tensors = read_checkpoint(path).extra
    assert set(tensors) == {"rng.torch.cpu", "gen.state", "schedule.table", "schedule.nested.0"}
    assert torch.equal(tensors["rng.torch.cpu"], torch.get_rng_state())
    assert torch.equal(tensors["gen.state"], objects["gen"].get_state())
    assert torch.equal(tensors["schedule.nested.0"], torch.tensor([2.0, 4.0, 6.0]))


def test_save_inference_holds_no_extra_state(tmp_path: Path) -> None:
    container, _ = tracked_container()
    path = container.save_inference(tmp_path)
    assert "extra" not in raw_metadata(path)["__pytorch_saver__"]


def test_load_restores_into_the_objects_given_and_tracks_them(tmp_path: Path) -> None:
    container, objects = tracked_container()
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    path = container.save(tmp_path)
    expected = (torch.rand(4), random.random(), np.random.rand())
    torch.manual_seed(9)
    random.seed(9)
    np.random.seed(9)
    targets = {
        "rng": RNG(),
        "gen": torch.Generator(),
        "scaler": torch.amp.GradScaler("cpu"),
        "counters": Counters(),
        "schedule": Schedule(),
    }
    loaded = ModelContainer()
    loaded.load(path, track=targets)
    assert torch.equal(torch.rand(4), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]
    assert torch.equal(targets["gen"].get_state(), objects["gen"].get_state())
    assert targets["scaler"].state_dict() == objects["scaler"].state_dict()
    assert targets["counters"] == Counters(step=7, epoch=2)
    assert targets["counters"].step == 7
    assert torch.equal(targets["schedule"].table, torch.tensor([1.0, 2.0, 3.0]))
    assert targets["schedule"].pairs == {3: (4, 0.5)}
    assert loaded.tracked == targets


def test_restore_puts_back_the_tracked_state(tmp_path: Path) -> None:
    container, objects = tracked_container()
    path = container.save(tmp_path)
    objects["counters"].step = 100
    objects["gen"].manual_seed(77)
    saved_gen = read_checkpoint(path).extra["gen.state"]
    container.restore(path)
    assert objects["counters"].step == 7
    assert torch.equal(objects["gen"].get_state(), saved_gen)


def untouched(objects: dict[str, Any]) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "gen": objects["gen"].get_state(),
        "counters": objects["counters"].state_dict(),
        "table": objects["schedule"].table.clone(),
    }


def assert_untouched(before: dict[str, Any], objects: dict[str, Any]) -> None:
    assert torch.equal(torch.get_rng_state(), before["torch"])
    assert torch.equal(objects["gen"].get_state(), before["gen"])
    assert objects["counters"].state_dict() == before["counters"]
    assert torch.equal(objects["schedule"].table, before["table"])


@pytest.mark.parametrize("fault", ["class", "missing", "refused"])
def test_a_bad_entry_changes_nothing(tmp_path: Path, fault: str) -> None:
    container, _ = tracked_container()
    if fault == "refused":
        bad = Schedule()
        bad.pairs = {-1: "boom"}  # type: ignore[dict-item]
        container.track("schedule", bad)
    path = container.save(tmp_path)
    torch.manual_seed(42)
    targets: dict[str, Any] = {
        "rng": RNG(),
        "gen": torch.Generator().manual_seed(1),
        "counters": Counters(step=1),
        "schedule": Schedule(),
    }
    if fault == "class":
        targets["counters"] = torch.Generator()
    if fault == "missing":
        targets["nowhere"] = Counters()
    before = untouched({**targets, "counters": Counters(step=1)} if fault == "class" else targets)
    held = ModelContainer()
    with pytest.raises(StateMismatchError) as info:
        held.load(path, track=targets)
    message = str(info.value)
    if fault == "class":
        assert "'counters'" in message and "pytorch_saver.Counters" in message
    elif fault == "missing":
        assert "'nowhere'" in message
    else:
        assert "'schedule'" in message and "refused" in message
    assert isinstance(info.value, ValueError)
    assert held.model is None
    assert torch.equal(torch.get_rng_state(), before["torch"])
    assert torch.equal(targets["gen"].get_state(), before["gen"])
    assert torch.equal(targets["schedule"].table, before["table"])


def test_restore_with_a_bad_entry_changes_nothing(tmp_path: Path) -> None:
    container, objects = tracked_container()
    path = container.save(tmp_path)
    container.track("other", Counters(a=1))
    objects["counters"].step = 50
    assert container.model is not None
    weight = container.model.weight.detach().clone()
    with torch.no_grad():
        container.model.weight.add_(1.0)
    changed = container.model.weight.detach().clone()
    with pytest.raises(StateMismatchError, match="'other'"):
        container.restore(path)
    assert objects["counters"].step == 50
    assert torch.equal(container.model.weight, changed)
    assert not torch.equal(weight, changed)


def test_what_cannot_be_tracked_is_refused_at_track() -> None:
    container = ModelContainer()
    with pytest.raises(ArgumentTypeError, match="cannot track"):
        container.track("x", object())
    with pytest.raises(ArgumentTypeError, match="non-empty"):
        container.track("", Counters())

    class Opaque:
        def state_dict(self) -> dict[str, Any]:
            return {"f": lambda: 0}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

    with pytest.raises(MetadataError, match="extra state 'opaque'"):
        container.track("opaque", Opaque())
    assert container.tracked == {}


def test_counters_hold_ints_only() -> None:
    counters = Counters(step=1)
    counters.step += 1
    assert counters.step == 2 and counters.state_dict() == {"step": 2}
    with pytest.raises(ArgumentTypeError):
        counters.step = 1.5  # type: ignore[assignment]
    with pytest.raises(AttributeError):
        _ = counters.epoch
