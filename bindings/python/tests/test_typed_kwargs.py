"""Typed kwargs (docs/FORMAT.md 11.2): what JSON cannot express (tuples,
classes, dtypes, dataclasses, namespaces, Hugging Face configs, codec
objects) goes through initialize, save and load by name and comes back as
the objects given; what has no typed form is refused at initialize."""

from __future__ import annotations

import argparse
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import pytest
import pytorch_saver
import torch
import torchvision  # noqa: F401  (imported: its classes resolve by name)
import typed_models
from pytorch_saver import (
    ClassResolutionError,
    MetadataError,
    ModelContainer,
    TypedValueError,
    read_checkpoint,
)
from pytorch_saver._format import write_checkpoint
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from transformers import BertConfig, BertForSequenceClassification
from typed_models import ClampedLinear, Interval, TypedNet, Widths

pytorch_saver.register_codec(
    "typed_models.Interval",
    Interval,
    lambda obj: {"low": obj.low, "high": obj.high},
    lambda cls, fields: cls(**fields),
)


def raw_metadata(path: str) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        out: dict[str, Any] = json.loads(zf.read("metadata.json"))
    return out


def rewritten(path: str, directory: Path, change: Any) -> str:
    """A copy of the file at ``path`` whose metadata ``change`` edited."""
    ckpt = read_checkpoint(path)
    metadata = json.loads(json.dumps(ckpt.metadata))
    change(metadata)
    internals = metadata["__pytorch_saver__"]
    directory.mkdir(parents=True, exist_ok=True)
    return write_checkpoint(
        str(directory),
        "doctored",
        metadata,
        ckpt.model,
        ckpt.optimizer if "optimizer" in internals else None,
        ckpt.extra if "extra" in internals else None,
    )


# The round trips of the issue: by name, kwargs equal, outputs and training
# bit-identical.

BERT_CONFIG = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    num_labels=3,
)


def resnet_case() -> tuple[Any, ...]:
    kwargs = {"block": BasicBlock, "layers": [1, 1, 1, 1], "num_classes": 10}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(2))
    return ResNet, kwargs, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, x, y


def bert_case() -> tuple[Any, ...]:
    kwargs = {"config": BertConfig(**BERT_CONFIG)}
    x = torch.randint(1, 100, (4, 7), generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 3, (4,), generator=torch.Generator().manual_seed(4))
    optim_kwargs = {"lr": 1e-3, "betas": (0.85, 0.98), "weight_decay": 0.01}
    return BertForSequenceClassification, kwargs, torch.optim.AdamW, optim_kwargs, x, y


def typed_net_case() -> tuple[Any, ...]:
    kwargs = {
        "in_dim": 5,
        "widths": Widths(hidden=(8, 6), activation=nn.GELU, dropout=0.25),
        "out_shape": (2, 3),
        "dtype": torch.float64,
    }
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 3, (4, 2), generator=torch.Generator().manual_seed(6))
    return TypedNet, kwargs, torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.95)}, x, y


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    out = out.logits if hasattr(out, "logits") else out
    assert isinstance(out, torch.Tensor)
    return out


def train_steps(container: ModelContainer, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
    assert container.model is not None and container.optim is not None
    container.model.train()
    torch.manual_seed(1234)  # the same dropout masks for both runs
    for _ in range(k):
        container.optim.zero_grad()
        out = logits(container.model, x)
        loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        container.optim.step()


@pytest.mark.parametrize(
    "case", [resnet_case, bert_case, typed_net_case], ids=["resnet", "bert", "typed_net"]
)
def test_a_round_trip_by_name_gives_the_kwargs_outputs_and_training_back(
    tmp_path: Path, case: Any
) -> None:
    torch.manual_seed(0)
    model_class, model_kwargs, optim_class, optim_kwargs, x, y = case()
    container = ModelContainer()
    container.initialize(model_class, model_kwargs, optim_class, optim_kwargs)
    train_steps(container, x, y, 2)
    path = container.save(tmp_path, "typed", note="round trip")

    loaded = ModelContainer()
    metadata, objs = loaded.load(path)  # no classes given
    assert type(objs.model) is model_class and type(objs.optimizer) is optim_class
    assert metadata["model_kwargs"] == model_kwargs
    assert metadata["optim_kwargs"] == optim_kwargs
    assert metadata["note"] == "round trip"
    assert container.model is not None
    container.model.eval()
    objs.model.eval()
    with torch.no_grad():
        assert torch.equal(logits(container.model, x), logits(objs.model, x))

    train_steps(container, x, y, 3)
    train_steps(loaded, x, y, 3)
    mine, theirs = container.model.state_dict(), objs.model.state_dict()
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name


def test_typed_values_are_written_as_the_format_tags(tmp_path: Path) -> None:
    _, kwargs, _, _, _, _ = typed_net_case()
    container = ModelContainer()
    container.initialize(TypedNet, kwargs, torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.95)})
    raw = raw_metadata(container.save(tmp_path))
    assert raw["model_kwargs"] == {
        "in_dim": 5,
        "widths": {
            "__type__": "object",
            "codec": "dataclass",
            "class": "typed_models.Widths",
            "fields": {
                "hidden": {"__type__": "tuple", "items": [8, 6]},
                "activation": {"__type__": "class", "name": "torch.nn.GELU"},
                "dropout": 0.25,
            },
        },
        "out_shape": {"__type__": "tuple", "items": [2, 3]},
        "dtype": {"__type__": "dtype", "name": "float64"},
    }
    assert raw["optim_kwargs"] == {"lr": 0.01, "betas": {"__type__": "tuple", "items": [0.8, 0.95]}}


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (1.5, 1.5),
        ([1, "a", None, True], [1, "a", None, True]),
        ({"a": [1.0]}, {"a": [1.0]}),
        (math.inf, {"__type__": "float", "value": "inf"}),
        (-math.inf, {"__type__": "float", "value": "-inf"}),
        ({1: "x", 2.5: "y"}, {"__type__": "dict", "items": [[1, "x"], [2.5, "y"]]}),
        ({"__type__": 1}, {"__type__": "dict", "items": [["__type__", 1]]}),
        ((), {"__type__": "tuple", "items": []}),
        (torch.bool, {"__type__": "dtype", "name": "bool"}),
        (
            argparse.Namespace(lr=0.1, sizes=(1, 2)),
            {
                "__type__": "object",
                "codec": "namespace",
                "class": None,
                "fields": {"lr": 0.1, "sizes": {"__type__": "tuple", "items": [1, 2]}},
            },
        ),
    ],
    ids=str,
)
def test_each_value_has_its_plainest_form_and_comes_back(
    tmp_path: Path, value: Any, encoded: Any
) -> None:
    container = ModelContainer()
    # An optimizer that takes any kwarg: the value rides in its kwargs.
    container.initialize(
        nn.Linear,
        {"in_features": 2, "out_features": 2},
        AnyKwargsSGD,
        {
            "lr": 0.1,
            "extra": value,
        },
    )
    path = container.save(tmp_path)
    assert raw_metadata(path)["optim_kwargs"]["extra"] == encoded
    metadata, objs = ModelContainer().load(path, classes=[AnyKwargsSGD])
    assert metadata["optim_kwargs"]["extra"] == value
    assert type(metadata["optim_kwargs"]["extra"]) is type(value)
    assert isinstance(objs.optimizer, AnyKwargsSGD)
    assert objs.optimizer.extra == value


class AnyKwargsSGD(torch.optim.SGD):
    """SGD that keeps one more kwarg of any value."""

    def __init__(self, params: Any, lr: float, extra: Any = None) -> None:
        super().__init__(params, lr=lr)
        self.extra = extra


def test_nan_survives(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(
        nn.Linear,
        {"in_features": 2, "out_features": 2},
        AnyKwargsSGD,
        {"lr": 0.1, "extra": math.nan},
    )
    metadata, _ = ModelContainer().load(container.save(tmp_path))
    assert math.isnan(metadata["optim_kwargs"]["extra"])


def test_a_registered_codec_round_trips_and_checks_the_class(tmp_path: Path) -> None:
    container = ModelContainer()
    kwargs = {"in_features": 3, "out_features": 2, "clamp": Interval(-0.5, 0.5)}
    container.initialize(ClampedLinear, kwargs)
    path = container.save(tmp_path)
    assert raw_metadata(path)["model_kwargs"]["clamp"] == {
        "__type__": "object",
        "codec": "typed_models.Interval",
        "class": "typed_models.Interval",
        "fields": {"low": -0.5, "high": 0.5},
    }
    metadata, objs = ModelContainer().load(path)
    assert metadata["model_kwargs"] == kwargs
    assert isinstance(objs.model, ClampedLinear) and objs.model.clamp == Interval(-0.5, 0.5)

    def point_at_widths(m: dict[str, Any]) -> None:
        m["model_kwargs"]["clamp"]["class"] = "typed_models.Widths"

    with pytest.raises(ClassResolutionError, match=r"model_kwargs\['clamp'\].*not a subclass"):
        ModelContainer().load(rewritten(path, tmp_path / "bad", point_at_widths))


def test_codec_names_need_a_dot_and_are_not_taken_twice() -> None:
    with pytest.raises(pytorch_saver.InvalidArgumentError, match="dot"):
        pytorch_saver.register_codec("interval", Interval, vars, lambda c, f: c(**f))
    with pytest.raises(pytorch_saver.InvalidArgumentError) as taken:
        pytorch_saver.register_codec("typed_models.Interval", Widths, vars, lambda c, f: c(**f))
    assert taken.value.kind == "DuplicateName"


def test_a_class_of_the_wrong_kind_is_refused_before_it_is_called(tmp_path: Path) -> None:
    _, kwargs, _, _, _, _ = typed_net_case()
    container = ModelContainer()
    container.initialize(TypedNet, kwargs)
    path = container.save(tmp_path)

    def not_a_dataclass(m: dict[str, Any]) -> None:
        m["model_kwargs"]["widths"]["class"] = "typed_models.NotADataclass"

    def not_a_class(m: dict[str, Any]) -> None:
        m["model_kwargs"]["widths"]["fields"]["activation"]["name"] = "torch.nn.functional.relu"

    def not_a_config(m: dict[str, Any]) -> None:
        m["model_kwargs"]["widths"]["codec"] = "hf_config"

    for change, pattern in (
        (not_a_dataclass, r"model_kwargs\['widths'\].*not a dataclass"),
        (not_a_class, r"model_kwargs\['widths'\]\.activation.*not a class"),
        (not_a_config, r"model_kwargs\['widths'\].*PretrainedConfig"),
    ):
        doctored = rewritten(path, tmp_path / change.__name__, change)
        with pytest.raises(ClassResolutionError, match=pattern) as info:
            ModelContainer().load(doctored)
        assert isinstance(info.value, ValueError)
    assert typed_models.NotADataclass.calls == 0


def test_a_module_not_imported_is_not_imported_unless_allowed(tmp_path: Path) -> None:
    import sys

    module = tmp_path / "typed_side_effect.py"
    canary = tmp_path / "canary"
    module.write_text(f"open({str(canary)!r}, 'w').close()\nimport torch\nGELU = torch.nn.GELU\n")
    _, kwargs, _, _, _, _ = typed_net_case()
    container = ModelContainer()
    container.initialize(TypedNet, kwargs)
    (tmp_path / "out").mkdir()
    path = container.save(tmp_path / "out")

    def elsewhere(m: dict[str, Any]) -> None:
        m["model_kwargs"]["widths"]["fields"]["activation"]["name"] = "typed_side_effect.GELU"

    doctored = rewritten(path, tmp_path / "doctored", elsewhere)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ClassResolutionError, match="typed_side_effect.GELU") as info:
            ModelContainer().load(doctored)
        assert "allow=" in str(info.value) and "classes=" in str(info.value)
        assert not canary.exists()
        metadata, _ = ModelContainer().load(doctored, allow=["typed_side_effect"])
        assert canary.exists()
        assert metadata["model_kwargs"]["widths"].activation is nn.GELU
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("typed_side_effect", None)


def test_an_unknown_codec_is_a_typed_value_error(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(
        ClampedLinear, {"in_features": 3, "out_features": 2, "clamp": Interval(0.0, 1.0)}
    )
    path = container.save(tmp_path)

    def unknown(m: dict[str, Any]) -> None:
        m["model_kwargs"]["clamp"]["codec"] = "other.Codec"

    with pytest.raises(TypedValueError, match=r"model_kwargs\['clamp'\].*'other.Codec'") as info:
        ModelContainer().load(rewritten(path, tmp_path / "bad", unknown))
    assert isinstance(info.value, ValueError) and info.value.kind == "TypedValue"


def test_lr_lambda_is_a_placeholder_supplied_again_at_load(tmp_path: Path) -> None:
    container = ModelContainer()
    objs = container.initialize(
        nn.Linear,
        {"in_features": 2, "out_features": 2},
        torch.optim.SGD,
        {"lr": 0.1},
        torch.optim.lr_scheduler.LambdaLR,
        {"lr_lambda": warmup},
    )
    assert objs.optimizer is not None and objs.scheduler is not None
    objs.optimizer.step()
    objs.scheduler.step()
    path = container.save(tmp_path)
    assert raw_metadata(path)["scheduler_kwargs"]["lr_lambda"] == {
        "__type__": "callable",
        "name": "test_typed_kwargs.warmup",
    }
    with pytest.raises(TypedValueError, match=r"scheduler_kwargs\['lr_lambda'\].*callables="):
        ModelContainer().load(path)
    metadata, loaded = ModelContainer().load(path, callables={"lr_lambda": warmup})
    assert metadata["scheduler_kwargs"] == {"lr_lambda": warmup}
    assert loaded.optimizer is not None
    assert loaded.optimizer.param_groups[0]["lr"] == objs.optimizer.param_groups[0]["lr"]


def warmup(epoch: int) -> float:
    return min(1.0, (epoch + 1) / 4)


# What has no typed form fails at initialize, before anything is built.


@pytest.mark.parametrize("where", ["model", "optim", "scheduler"])
def test_a_lambda_fails_at_initialize_naming_the_kwarg(tmp_path: Path, where: str) -> None:
    kwargs: dict[str, dict[str, Any]] = {
        "model": {"in_features": 2, "out_features": 2},
        "optim": {"lr": 0.1},
        "scheduler": {"step_size": 2},
    }
    kwargs[where]["act"] = lambda x: x
    built: list[str] = []

    class Counted(nn.Linear):
        def __init__(self, in_features: int, out_features: int, **_: Any) -> None:
            built.append("model")
            super().__init__(in_features, out_features)

    container = ModelContainer()
    with pytest.raises(MetadataError, match=rf"{where}_kwargs\['act'\]") as info:
        container.initialize(
            Counted,
            kwargs["model"],
            torch.optim.SGD,
            kwargs["optim"],
            torch.optim.lr_scheduler.StepLR,
            kwargs["scheduler"],
        )
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for codec in ("dataclass", "namespace", "hf_config", "register_codec"):
        assert codec in message
    assert built == []
    assert container.model is None
    assert list(tmp_path.iterdir()) == []


def test_an_open_file_fails_at_initialize_naming_the_kwarg(tmp_path: Path) -> None:
    container = ModelContainer()
    with open(tmp_path / "log.txt", "w") as log:
        with pytest.raises(MetadataError, match=r"model_kwargs\['opts'\]\['log'\]"):
            container.initialize(
                nn.Linear, {"in_features": 2, "out_features": 2, "opts": {"log": log}}
            )
    assert container.model is None
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]


def test_a_class_defined_in_a_function_fails_at_initialize(tmp_path: Path) -> None:
    class Local(nn.ReLU):
        pass

    with pytest.raises(MetadataError, match=r"model_kwargs\['activation'\].*module level"):
        ModelContainer().initialize(
            nn.Linear, {"in_features": 2, "out_features": 2, "activation": Local}
        )


def test_user_metadata_stays_plain_json(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(nn.Linear, {"in_features": 2, "out_features": 2})
    with pytest.raises(MetadataError, match="dtype") as info:
        container.save(tmp_path, dtype=torch.float32)
    assert isinstance(info.value, ValueError)
    path = container.save(tmp_path, pair=(1, 2), tagged={"__type__": "tuple", "items": [1]})
    metadata, _ = ModelContainer().load(path)
    assert metadata["pair"] == [1, 2]
    assert metadata["tagged"] == {"__type__": "tuple", "items": [1]}
