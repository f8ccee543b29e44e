"""ModelContainer: initialize, save, save_inference and load, with the
original package's (0.1.x) behaviour and errors."""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import pytorch_saver
import torch
from pytorch_saver import (
    ClassResolutionError,
    InitializationError,
    MetadataError,
    ModelContainer,
    ModelObjects,
    StateMismatchError,
    read_checkpoint,
)
from pytorch_saver.models import MLP
from support import (
    MODEL_KWARGS,
    Model,
    ScaledForward,
    SwappedParameter,
    assert_same_model,
    batches,
    optimizer_state_by_name,
    train,
)
from torch import nn

OPTIM_KWARGS = {"lr": 2e-4}
SCHEDULER_KWARGS = {"T_0": 10}
WARM_RESTARTS = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts


def full_container() -> tuple[ModelContainer, ModelObjects]:
    container = ModelContainer()
    objs = container.initialize(
        Model, MODEL_KWARGS, torch.optim.Adam, OPTIM_KWARGS, WARM_RESTARTS, SCHEDULER_KWARGS
    )
    return container, objs


def raw_metadata(path: str) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        out: dict[str, Any] = json.loads(zf.read("metadata.json"))
    return out


# initialize


def test_initialize_model() -> None:
    objs = ModelContainer().initialize(Model, {**MODEL_KWARGS, "in_dim": 32, "hidden_dim": 32})
    assert isinstance(objs.model, nn.Module)
    assert objs.model.state_dict()["fc1.weight"].shape == (32, 32)
    assert objs.optimizer is None and objs.scheduler is None


def test_initialize_model_optimizer_and_scheduler() -> None:
    container, objs = full_container()
    assert isinstance(objs.optimizer, torch.optim.Adam)
    assert objs.optimizer.param_groups[0]["lr"] == 2e-4
    assert isinstance(objs.scheduler, WARM_RESTARTS)
    assert objs.scheduler.T_0 == 10
    assert container.model is objs.model
    assert container.optim is objs.optimizer
    assert container.scheduler is objs.scheduler


def test_model_objects_is_the_original_named_tuple() -> None:
    model = nn.Linear(1, 1)
    objs = ModelObjects(model)
    assert objs == (model, None, None)
    assert ModelObjects._fields == ("model", "optimizer", "scheduler")


def test_initialize_without_model_class_is_a_type_error() -> None:
    with pytest.raises(TypeError) as info:
        ModelContainer().initialize(model_class=None, model_kwargs=MODEL_KWARGS)  # type: ignore[arg-type]
    assert isinstance(info.value, pytorch_saver.ArgumentTypeError)
    assert isinstance(info.value, pytorch_saver.InvalidArgumentError)
    assert info.value.kind == "InvalidArgument"


def test_kwargs_that_are_not_a_mapping_are_a_type_error() -> None:
    with pytest.raises(pytorch_saver.ArgumentTypeError, match="model_kwargs must be a mapping"):
        ModelContainer().initialize(Model, [("in_dim", 1)])  # type: ignore[arg-type]


def test_initialize_with_a_model_class_that_is_not_a_module_is_a_value_error() -> None:
    with pytest.raises(ClassResolutionError) as info:
        ModelContainer().initialize(torch.optim.Adam, {})  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_scheduler_without_optimizer_is_a_value_error() -> None:
    with pytest.raises(ValueError) as info:
        ModelContainer().initialize(
            Model, MODEL_KWARGS, None, OPTIM_KWARGS, WARM_RESTARTS, SCHEDULER_KWARGS
        )
    assert isinstance(info.value, pytorch_saver.InvalidArgumentError)
    assert info.value.kind == "Usage"


def test_bad_kwargs_raise_initialization_error_chained() -> None:
    bad = {**MODEL_KWARGS, "_in_dim": 32}
    del bad["in_dim"]
    with pytest.raises(InitializationError) as info:
        ModelContainer().initialize(
            Model, bad, torch.optim.Adam, OPTIM_KWARGS, WARM_RESTARTS, SCHEDULER_KWARGS
        )
    assert isinstance(info.value.__cause__, TypeError)
    assert isinstance(info.value, RuntimeError)
    assert info.value.kind == "Factory"


@pytest.mark.parametrize(
    ("optim_kwargs", "scheduler_kwargs"),
    [({"lr": 1e-3, "nonsense": 1}, SCHEDULER_KWARGS), (OPTIM_KWARGS, {"T_0": 10, "nonsense": 1})],
    ids=["optimizer", "scheduler"],
)
def test_bad_optimizer_or_scheduler_kwargs_raise_initialization_error(
    optim_kwargs: dict[str, Any], scheduler_kwargs: dict[str, Any]
) -> None:
    with pytest.raises(InitializationError) as info:
        ModelContainer().initialize(
            Model, MODEL_KWARGS, torch.optim.Adam, optim_kwargs, WARM_RESTARTS, scheduler_kwargs
        )
    assert isinstance(info.value.__cause__, TypeError)


def test_failed_initialize_keeps_what_the_container_held() -> None:
    container, objs = full_container()
    with pytest.raises(InitializationError):
        container.initialize(Model, MODEL_KWARGS, torch.optim.Adam, {"lr": -1.0})
    assert container.model is objs.model
    assert container.optim is objs.optimizer
    assert container.scheduler is objs.scheduler


def test_param_groups_kwarg_builds_groups_by_parameter_name(tmp_path: Path) -> None:
    names = [n for n, _ in Model(**MODEL_KWARGS).named_parameters()]
    groups = [{"params": names[2:], "lr": 0.5}, {"params": names[:2]}]
    container = ModelContainer()
    objs = container.initialize(
        Model, MODEL_KWARGS, torch.optim.SGD, {"lr": 0.1, "param_groups": groups}
    )
    assert objs.optimizer is not None
    named = dict(objs.model.named_parameters())
    got = objs.optimizer.param_groups
    assert [g["lr"] for g in got] == [0.5, 0.1]
    assert [p for p in got[0]["params"]] == [named[n] for n in names[2:]]
    assert [p for p in got[1]["params"]] == [named[n] for n in names[:2]]
    train(objs, batches(2))
    path = container.save(tmp_path)
    assert raw_metadata(path)["optim_kwargs"]["param_groups"] == groups
    _, loaded = ModelContainer().load(path)
    assert loaded.optimizer is not None
    assert [g["lr"] for g in loaded.optimizer.param_groups] == [0.5, 0.1]
    assert_same_model(objs.model, loaded.model)


@pytest.mark.parametrize(
    "groups",
    [
        [{"params": ["fc1.weight", "nope"]}],
        [{"params": ["fc1.weight"]}, {"params": ["fc1.weight"]}],
        [{"params": ["fc1.weight"]}],
        [],
        [{"lr": 0.1}],
    ],
    ids=["unknown", "twice", "missing", "empty", "no-params"],
)
def test_bad_param_groups_kwarg_raises_initialization_error(groups: list[Any]) -> None:
    with pytest.raises(InitializationError):
        ModelContainer().initialize(
            Model, MODEL_KWARGS, torch.optim.SGD, {"lr": 0.1, "param_groups": groups}
        )


# save


def test_save_before_initialize_is_a_runtime_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as info:
        ModelContainer().save(tmp_path, prefix="test")
    assert isinstance(info.value, pytorch_saver.UsageError)
    assert info.value.kind == "NotInitialized"
    with pytest.raises(pytorch_saver.UsageError):
        ModelContainer().save_inference(tmp_path, prefix="test")
    assert list(tmp_path.iterdir()) == []


def test_save_names_the_file_and_never_overwrites(tmp_path: Path) -> None:
    container, _ = full_container()
    first = container.save(tmp_path, "tutorial")
    second = container.save(tmp_path, "tutorial")
    plain = container.save(tmp_path)
    inference = container.save_inference(tmp_path, "tutorial")
    assert first != second
    ts = raw_metadata(first)["timestamp"]
    assert os.path.basename(first) == f"tutorial_checkpoint_{ts}.zip"
    assert os.path.basename(plain).startswith("checkpoint_")
    assert os.path.basename(inference).startswith("tutorial_inference_")
    assert len(list(tmp_path.iterdir())) == 4


def test_saved_metadata_is_flat_with_internals_under_one_key(tmp_path: Path) -> None:
    container, _ = full_container()
    path = container.save(tmp_path, "t", loss=0.55, epoch=5)
    metadata = raw_metadata(path)
    assert set(metadata) == {
        "model_kwargs",
        "optim_kwargs",
        "scheduler_kwargs",
        "timestamp",
        "loss",
        "epoch",
        "__pytorch_saver__",
    }
    assert metadata["model_kwargs"] == MODEL_KWARGS
    assert metadata["optim_kwargs"] == OPTIM_KWARGS
    assert metadata["scheduler_kwargs"] == SCHEDULER_KWARGS
    assert isinstance(metadata["timestamp"], int)
    internals = metadata["__pytorch_saver__"]
    assert internals["format_version"] == 2
    assert internals["kind"] == "checkpoint"
    assert internals["model"] == {"class": "support.Model"}
    assert internals["optimizer"]["class"] == "torch.optim.Adam"
    assert internals["scheduler"]["class"] == "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts"
    assert internals["producer"] == {
        "library": "pytorch-saver",
        "version": pytorch_saver.__version__,
        "language": "python",
        "torch_version": torch.__version__,
    }


def test_save_inference_holds_the_model_only(tmp_path: Path) -> None:
    container, objs = full_container()
    path = container.save_inference(tmp_path, "t")
    metadata = raw_metadata(path)
    assert "optim_kwargs" not in metadata and "scheduler_kwargs" not in metadata
    internals = metadata["__pytorch_saver__"]
    assert internals["kind"] == "inference"
    assert "optimizer" not in internals and "scheduler" not in internals
    assert read_checkpoint(path).optimizer == {}
    _, loaded = ModelContainer().load(path)
    assert loaded.optimizer is None and loaded.scheduler is None
    assert_same_model(objs.model, loaded.model)


def test_save_of_a_model_only_container_has_no_optimizer_keys(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(Model, MODEL_KWARGS)
    metadata = raw_metadata(container.save(tmp_path))
    assert set(metadata) == {"model_kwargs", "timestamp", "__pytorch_saver__"}


@pytest.mark.parametrize(
    "value",
    [{1, 2, 3}, math.nan, math.inf, -math.inf, [1.0, math.nan], object(), torch.ones(1), {1: "a"}],
    ids=["set", "nan", "inf", "-inf", "nested-nan", "object", "tensor", "int-key"],
)
@pytest.mark.parametrize("method", ["save", "save_inference"])
def test_user_metadata_that_is_not_json_is_refused_and_nothing_written(
    tmp_path: Path, value: object, method: str
) -> None:
    container, _ = full_container()
    with pytest.raises(MetadataError, match="not_serializable") as info:
        getattr(container, method)(tmp_path, prefix="test", not_serializable=value)
    assert isinstance(info.value, ValueError)
    assert info.value.kind == "InvalidMetadata"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "key", ["model_kwargs", "optim_kwargs", "scheduler_kwargs", "timestamp", "__pytorch_saver__"]
)
def test_reserved_metadata_keys_are_refused_and_nothing_written(tmp_path: Path, key: str) -> None:
    container = ModelContainer()
    container.initialize(Model, MODEL_KWARGS)  # even keys the file would not otherwise use
    with pytest.raises(MetadataError, match=key) as info:
        reserved: dict[str, Any] = {key: 1}
        container.save(tmp_path, **reserved)
    assert info.value.kind == "ReservedMetadataKey"
    assert list(tmp_path.iterdir()) == []


def test_a_bad_file_name_prefix_is_an_invalid_argument(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(Model, MODEL_KWARGS)
    with pytest.raises(ValueError, match="may not contain") as info:
        container.save(tmp_path, "a/b")
    assert isinstance(info.value, pytorch_saver.InvalidArgumentError)
    assert info.value.kind == "InvalidInput"
    assert list(tmp_path.iterdir()) == []


def test_kwargs_without_a_typed_form_are_refused_at_initialize_naming_the_kwarg(
    tmp_path: Path,
) -> None:
    container = ModelContainer()
    with pytest.raises(MetadataError, match=r"optim_kwargs\['lr'\]") as info:
        container.initialize(
            nn.Linear,
            {"in_features": 2, "out_features": 2},
            torch.optim.SGD,
            {"lr": torch.tensor(0.1)},
        )
    assert isinstance(info.value, ValueError)
    assert container.model is None
    assert list(tmp_path.iterdir()) == []


def test_a_version_1_container_refuses_typed_kwargs_at_initialize(tmp_path: Path) -> None:
    container = ModelContainer(format_version=1)
    assert container.format_version == 1
    with pytest.raises(MetadataError, match=r"model_kwargs\['dtype'\].*format version 1"):
        container.initialize(
            nn.Linear, {"in_features": 2, "out_features": 2, "dtype": torch.float64}
        )
    assert container.model is None
    with pytest.raises(pytorch_saver.InvalidArgumentError, match="format version 1"):
        container.track("counters", pytorch_saver.Counters(step=1))
    with pytest.raises(pytorch_saver.InvalidArgumentError, match="1 or 2"):
        ModelContainer(format_version=3)


def test_a_version_1_container_writes_version_1_with_pairs_as_lists(tmp_path: Path) -> None:
    container = ModelContainer(format_version=1)
    objs = container.initialize(
        Model, MODEL_KWARGS, torch.optim.Adam, {"lr": 1e-3, "betas": (0.8, 0.9)}
    )
    path = container.save(tmp_path)
    raw = raw_metadata(path)
    assert raw["__pytorch_saver__"]["format_version"] == 1
    assert raw["optim_kwargs"]["betas"] == [0.8, 0.9]
    metadata, loaded = ModelContainer().load(path)
    assert metadata["optim_kwargs"]["betas"] == [0.8, 0.9]
    assert loaded.optimizer is not None
    assert loaded.optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    assert_same_model(objs.model, loaded.model)


def test_tuples_in_user_metadata_are_saved_as_lists(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(Model, MODEL_KWARGS)
    path = container.save(tmp_path, shape=(1, 2), nested={"a": (3.5, None, True)})
    metadata, _ = ModelContainer().load(path)
    assert metadata["shape"] == [1, 2]
    assert metadata["nested"] == {"a": [3.5, None, True]}


# load


def test_load_model(tmp_path: Path) -> None:
    container = ModelContainer()
    objs = container.initialize(Model, MODEL_KWARGS)
    path = container.save(tmp_path, prefix="test")
    metadata, loaded = ModelContainer().load(path, Model)
    assert_same_model(objs.model, loaded.model)
    assert metadata["model_kwargs"] == MODEL_KWARGS


def test_load_model_optimizer_and_scheduler_with_classes_given(tmp_path: Path) -> None:
    container, objs = full_container()
    train(objs, batches(3))
    path = container.save(tmp_path, prefix="test")
    metadata, loaded = ModelContainer().load(path, Model, torch.optim.Adam, WARM_RESTARTS)
    assert_same_model(objs.model, loaded.model)
    assert objs.optimizer is not None and loaded.optimizer is not None
    assert (
        loaded.optimizer.state_dict()["param_groups"] == objs.optimizer.state_dict()["param_groups"]
    )
    assert objs.scheduler is not None and loaded.scheduler is not None
    assert loaded.scheduler.state_dict() == objs.scheduler.state_dict()
    assert metadata["model_kwargs"] == MODEL_KWARGS
    assert metadata["optim_kwargs"] == OPTIM_KWARGS
    assert metadata["scheduler_kwargs"] == SCHEDULER_KWARGS


def test_load_with_no_classes_resolves_all_three_by_name(tmp_path: Path) -> None:
    container, objs = full_container()
    train(objs, batches(2))
    path = container.save(tmp_path, "tutorial", loss=0.55, epoch=5)
    metadata, loaded = ModelContainer().load(path)
    assert type(loaded.model) is Model
    assert type(loaded.optimizer) is torch.optim.Adam
    assert type(loaded.scheduler) is WARM_RESTARTS
    assert_same_model(objs.model, loaded.model)
    assert metadata == {
        "model_kwargs": MODEL_KWARGS,
        "optim_kwargs": OPTIM_KWARGS,
        "scheduler_kwargs": SCHEDULER_KWARGS,
        "timestamp": raw_metadata(path)["timestamp"],
        "loss": 0.55,
        "epoch": 5,
    }


def test_load_sets_the_container_attributes(tmp_path: Path) -> None:
    container, _ = full_container()
    path = container.save(tmp_path)
    target = ModelContainer()
    _, loaded = target.load(path)
    assert target.model is loaded.model
    assert target.optim is loaded.optimizer
    assert target.scheduler is loaded.scheduler
    again = target.save(tmp_path)  # what was loaded saves again
    assert raw_metadata(again)["optim_kwargs"] == OPTIM_KWARGS


def test_load_invalid_class(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(Model, MODEL_KWARGS, torch.optim.Adam, OPTIM_KWARGS)
    path = container.save(tmp_path, prefix="test")
    with pytest.raises(ValueError):
        ModelContainer().load(path, torch.optim.Adam, torch.optim.Adam)  # type: ignore[arg-type]
    with pytest.raises(InitializationError):
        ModelContainer().load(path, Model, Model)  # type: ignore[arg-type]


def test_load_builds_only_the_classes_given(tmp_path: Path) -> None:
    container, _ = full_container()
    path = container.save(tmp_path, prefix="test")
    _, loaded = ModelContainer().load(path, Model)
    assert loaded.optimizer is None and loaded.scheduler is None
    assert isinstance(loaded.model, Model)
    _, loaded = ModelContainer().load(path, Model, torch.optim.Adam)
    assert isinstance(loaded.optimizer, torch.optim.Adam) and loaded.scheduler is None
    _, loaded = ModelContainer().load(path, None, torch.optim.Adam)
    assert isinstance(loaded.model, Model) and loaded.scheduler is None


def test_load_scheduler_without_optimizer_is_a_value_error(tmp_path: Path) -> None:
    container, _ = full_container()
    path = container.save(tmp_path)
    with pytest.raises(ValueError):
        ModelContainer().load(path, Model, None, WARM_RESTARTS)


def test_load_custom_metadata(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(Model, MODEL_KWARGS)
    path = container.save(
        tmp_path, prefix="test", loss=0.123, dataset="fake_data", random_data=[1.2, 4.3, 1.9, 0.1]
    )
    metadata, _ = ModelContainer().load(path, Model)
    assert metadata["loss"] == 0.123
    assert metadata["dataset"] == "fake_data"
    assert metadata["random_data"] == [1.2, 4.3, 1.9, 0.1]
    assert "__pytorch_saver__" not in metadata


def test_load_of_an_optimizer_the_file_does_not_hold_is_refused(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(Model, MODEL_KWARGS)
    path = container.save(tmp_path)
    with pytest.raises(StateMismatchError, match="no optimizer"):
        ModelContainer().load(path, Model, torch.optim.Adam)


def test_failed_load_keeps_what_the_container_held(tmp_path: Path) -> None:
    saved = ModelContainer()
    saved.initialize(ScaledForward, {}, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})
    train(saved_objects(saved), batches(1, out_dim=2))
    path = saved.save(tmp_path)
    container, objs = full_container()
    before = {k: v.clone() for k, v in objs.model.state_dict().items()}
    # The model state fits SwappedParameter; its optimizer state does not.
    with pytest.raises(StateMismatchError):
        container.load(path, SwappedParameter, torch.optim.SGD)
    assert container.model is objs.model
    assert container.optim is objs.optimizer
    assert container.scheduler is objs.scheduler
    for key, value in objs.model.state_dict().items():
        assert torch.equal(value, before[key])


def saved_objects(container: ModelContainer) -> ModelObjects:
    assert container.model is not None
    return ModelObjects(container.model, container.optim, container.scheduler)


def test_betas_come_back_as_a_tuple(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(Model, MODEL_KWARGS, torch.optim.Adam, {"lr": 1e-3, "betas": (0.8, 0.9)})
    path = container.save(tmp_path)
    assert raw_metadata(path)["optim_kwargs"]["betas"] == {
        "__type__": "tuple",
        "items": [0.8, 0.9],
    }
    metadata, loaded = ModelContainer().load(path)
    assert loaded.optimizer is not None
    assert loaded.optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    assert metadata["optim_kwargs"]["betas"] == (0.8, 0.9)


def test_readme_example(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(
        MLP, {"in_dim": 4, "hidden_dim": 8, "n_classes": 3}, torch.optim.Adam, {"lr": 1e-3}
    )
    path = container.save(str(tmp_path), "tutorial", loss=0.55, epoch=5)
    assert os.path.basename(path).startswith("tutorial_checkpoint_")
    inference = container.save_inference(str(tmp_path), "tutorial")
    metadata, objs = ModelContainer().load(path)
    assert metadata["loss"] == 0.55 and metadata["epoch"] == 5
    assert isinstance(objs.model, MLP) and isinstance(objs.optimizer, torch.optim.Adam)
    _, objs = ModelContainer().load(inference)
    assert objs.optimizer is None
    assert repr(ModelContainer()) == "ModelContainer(model=None, optim=None, scheduler=None)"


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ],
)
def test_load_to_a_device_puts_model_and_optimizer_state_there(tmp_path: Path, device: str) -> None:
    container, objs = full_container()
    train(objs, batches(2))
    path = container.save(tmp_path)
    target = ModelContainer()
    _, loaded = target.load(path, device=device)
    assert loaded.optimizer is not None
    for name, value in loaded.model.state_dict().items():
        assert value.device.type == device
        assert torch.equal(value.cpu(), objs.model.state_dict()[name])
    for state in loaded.optimizer.state.values():
        assert state["exp_avg"].device.type == device
    train(loaded, [(x.to(device), y.to(device)) for x, y in batches(3)[2:]])
    # What was trained on the device saves, and loads back on the CPU.
    (tmp_path / "again").mkdir()
    _, back = ModelContainer().load(target.save(tmp_path / "again"))
    assert back.optimizer is not None
    for name, value in back.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name].cpu())
    want = optimizer_state_by_name(loaded.optimizer, loaded.model)
    got = optimizer_state_by_name(back.optimizer, back.model)
    assert got.keys() == want.keys()
    for name, state in want.items():
        for key, value in state.items():
            assert torch.equal(got[name][key], value.cpu()), (name, key)
