"""ModelContainer.restore: a file's state into the objects a container
holds, keeping their storage, all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_saver import ModelContainer, ModelObjects, StateMismatchError, UsageError
from pytorch_saver.models import MLP
from support import assert_same_objects, batches, train

KWARGS = {"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}
STEP_LR = torch.optim.lr_scheduler.StepLR


def trained(tmp_path: Path, kwargs: dict[str, int] = KWARGS) -> tuple[ModelContainer, str]:
    container = ModelContainer()
    objs = container.initialize(
        MLP, kwargs, torch.optim.Adam, {"lr": 1e-2}, STEP_LR, {"step_size": 2}
    )
    train(objs, batches(3))
    return container, container.save(tmp_path, "r", epoch=3)


def fresh() -> ModelContainer:
    container = ModelContainer()
    container.initialize(MLP, KWARGS, torch.optim.Adam, {"lr": 1e-3}, STEP_LR, {"step_size": 5})
    return container


def objects(container: ModelContainer) -> ModelObjects:
    assert container.model is not None
    return ModelObjects(container.model, container.optim, container.scheduler)


def held_tensors(container: ModelContainer) -> dict[str, torch.Tensor]:
    assert container.model is not None and container.optim is not None
    out = {f"model.{k}": v for k, v in container.model.state_dict().items()}
    for i, state in enumerate(container.optim.state.values()):
        out.update({f"optim.{i}.{k}": v for k, v in state.items()})
    return out


def test_restore_round_trip_keeps_the_storage(tmp_path: Path) -> None:
    source, path = trained(tmp_path)
    target = fresh()
    assert target.model is not None and target.optim is not None
    pointers = {k: v.data_ptr() for k, v in target.model.state_dict().items()}
    metadata = target.restore(path)
    assert metadata["epoch"] == 3 and metadata["model_kwargs"] == KWARGS
    assert {k: v.data_ptr() for k, v in target.model.state_dict().items()} == pointers
    assert_same_objects(objects(source), objects(target))


def test_restore_copies_into_existing_optimizer_state(tmp_path: Path) -> None:
    source, path = trained(tmp_path)
    target = fresh()
    target.restore(path)
    pointers = {k: v.data_ptr() for k, v in held_tensors(target).items()}
    target.restore(path, verify=False)
    assert {k: v.data_ptr() for k, v in held_tensors(target).items()} == pointers
    more = batches(5)[3:]
    train(objects(source), more)
    train(objects(target), more)
    assert_same_objects(objects(source), objects(target))


def test_a_mismatching_file_changes_nothing(tmp_path: Path) -> None:
    _, path = trained(tmp_path, {**KWARGS, "hidden_dim": 16})
    target = fresh()
    before = {k: v.clone() for k, v in held_tensors(target).items()}
    with pytest.raises(StateMismatchError, match="fc1.weight"):
        target.restore(path)
    after = held_tensors(target)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_file_of_other_classes_is_refused(tmp_path: Path) -> None:
    _, path = trained(tmp_path)
    other = ModelContainer()
    other.initialize(MLP, KWARGS, torch.optim.SGD, {"lr": 0.1}, STEP_LR, {"step_size": 2})
    with pytest.raises(StateMismatchError, match="torch.optim.Adam"):
        other.restore(path)
    model_only = ModelContainer()
    model_only.initialize(MLP, KWARGS)
    with pytest.raises(StateMismatchError, match="restore"):
        model_only.restore(path)
    with pytest.raises(RuntimeError, match="initialize") as info:
        ModelContainer().restore(path)
    assert isinstance(info.value, UsageError) and info.value.kind == "NotInitialized"
