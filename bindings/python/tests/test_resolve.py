"""Class names: what a file records for a class, and safe resolution of the
names a file holds (no import, no call, before the kind is checked)."""

from __future__ import annotations

import os
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_saver
import torch
from pytorch_saver import ClassResolutionError, ModelContainer, _resolve, class_name, register
from pytorch_saver.models import MLP
from support import MODEL_KWARGS, Model, rewrite_class
from torch import nn


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    registry, recorded = dict(_resolve._registry), dict(_resolve._recorded)
    yield
    _resolve._registry.clear()
    _resolve._registry.update(registry)
    _resolve._recorded.clear()
    _resolve._recorded.update(recorded)


@pytest.fixture
def saved(tmp_path: Path) -> str:
    """A checkpoint of support.Model with Adam and StepLR."""
    container = ModelContainer()
    container.initialize(
        Model,
        MODEL_KWARGS,
        torch.optim.Adam,
        {"lr": 1e-3},
        torch.optim.lr_scheduler.StepLR,
        {"step_size": 2},
    )
    (tmp_path / "saved").mkdir()
    return container.save(tmp_path / "saved")


class Outer:
    class Inner(nn.Linear):
        pass


def local_model_class() -> type[nn.Module]:
    class Local(nn.Linear):
        pass

    return Local


# names recorded


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (torch.optim.Adam, "torch.optim.Adam"),
        (torch.optim.SGD, "torch.optim.SGD"),
        (torch.optim.lr_scheduler.StepLR, "torch.optim.lr_scheduler.StepLR"),
        (torch.optim.lr_scheduler.ReduceLROnPlateau, "torch.optim.lr_scheduler.ReduceLROnPlateau"),
        (nn.Linear, "torch.nn.Linear"),
        (MLP, "pytorch_saver.models.MLP"),
        (Model, "support.Model"),
        (Outer.Inner, "test_resolve.Outer.Inner"),
    ],
)
def test_recorded_names(cls: type, name: str) -> None:
    assert class_name(cls) == name


def test_a_registered_class_is_recorded_under_its_first_registered_name() -> None:
    Local = local_model_class()
    assert "<locals>" in class_name(Local)
    register(Local, name="mypkg.Local")
    register(Local, name="oldpkg.Local")
    assert class_name(Local) == "mypkg.Local"


# resolution


@pytest.mark.parametrize(
    ("name", "kind", "cls"),
    [
        ("torch.optim.Adam", "optimizer", torch.optim.Adam),
        ("torch.optim.adam.Adam", "optimizer", torch.optim.Adam),
        ("torch.optim.lr_scheduler.OneCycleLR", "scheduler", torch.optim.lr_scheduler.OneCycleLR),
        ("torch.nn.Linear", "model", nn.Linear),
        ("pytorch_saver.models.MLP", "model", MLP),
        ("support.Model", "model", Model),
        ("test_resolve.Outer.Inner", "model", Outer.Inner),
    ],
)
def test_names_that_resolve(name: str, kind: _resolve.Kind, cls: type) -> None:
    assert _resolve.resolve(name, kind) is cls


@pytest.mark.parametrize(
    "name", ["os.system", "builtins.eval", "subprocess.Popen", "posix.system", "builtins.exec"]
)
def test_malicious_names_are_refused_without_running_anything(
    saved: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    calls: list[Any] = []
    module, _, attr = name.rpartition(".")
    if module in ("os", "posix"):  # a function: a call would be recorded
        monkeypatch.setattr(sys.modules[module], attr, lambda *a, **k: calls.append(a))
    path = rewrite_class(saved, "model", name, tmp_path / "bad")
    with pytest.raises(ClassResolutionError, match=name):
        ModelContainer().load(path)
    assert calls == []


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("model", "torch.Tensor"),
        ("model", "torch.optim.Adam"),
        ("optimizer", "torch.nn.Linear"),
        ("optimizer", "torch.optim.lr_scheduler.StepLR"),
        ("scheduler", "torch.optim.SGD"),
        ("model", "collections.OrderedDict"),
        ("model", "torch.nn.functional.relu"),
    ],
)
def test_names_of_the_wrong_kind_are_refused(
    saved: str, tmp_path: Path, kind: str, name: str
) -> None:
    path = rewrite_class(saved, kind, name, tmp_path / "bad")
    with pytest.raises(ClassResolutionError, match="refusing"):
        ModelContainer().load(path)


@pytest.mark.parametrize(
    "name", ["support.Nope", "no_such_module_xyz.Net", "Model", "support..Model", "support.Model "]
)
def test_unknown_names_are_refused_with_the_ways_to_allow_them(
    saved: str, tmp_path: Path, name: str
) -> None:
    path = rewrite_class(saved, "model", name, tmp_path / "bad")
    with pytest.raises(ClassResolutionError) as info:
        ModelContainer().load(path)
    message = str(info.value)
    assert repr(name) in message
    for way in ("model_class=", "pytorch_saver.register", "allow=", "import its module"):
        assert way in message


def write_module(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))


def test_a_module_not_yet_imported_is_never_imported_unless_allowed(
    saved: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = tmp_path / "canary"
    write_module(
        tmp_path,
        "side_effect_mod",
        f"""
        open({str(canary)!r}, "w").close()

        class Net:
            def __init__(self, **kwargs):
                open({str(canary)!r} + ".called", "w").close()
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "side_effect_mod", raising=False)
    path = rewrite_class(saved, "model", "side_effect_mod.Net", tmp_path / "bad")

    with pytest.raises(ClassResolutionError):
        ModelContainer().load(path)
    assert not canary.exists()
    assert "side_effect_mod" not in sys.modules

    # Allowed, it is imported; its Net is still no nn.Module, so never called.
    with pytest.raises(ClassResolutionError, match="not a subclass of torch.nn.Module"):
        ModelContainer().load(path, allow=["side_effect_mod"])
    assert canary.exists()
    assert not Path(f"{canary}.called").exists()
    monkeypatch.delitem(sys.modules, "side_effect_mod")


def test_an_allowed_module_is_imported_and_its_class_loads(
    saved: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_module(
        tmp_path,
        "allowed_pkg_mod",
        """
        from support import Model as Net
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "allowed_pkg_mod", raising=False)
    path = rewrite_class(saved, "model", "allowed_pkg_mod.Net", tmp_path / "allowed")
    with pytest.raises(ClassResolutionError):
        ModelContainer().load(path, allow=["allowed_pkg"])  # exactly the named module
    assert "allowed_pkg_mod" not in sys.modules
    _, objs = ModelContainer().load(path, allow="allowed_pkg_mod")
    assert isinstance(objs.model, Model)
    monkeypatch.delitem(sys.modules, "allowed_pkg_mod")


def test_attribute_hooks_of_imported_modules_do_not_run(
    saved: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    hooked = types.ModuleType("hooked_mod")

    def hook(name: str) -> Any:
        calls.append(name)
        return Model

    hooked.__dict__["__getattr__"] = hook
    monkeypatch.setitem(sys.modules, "hooked_mod", hooked)
    path = rewrite_class(saved, "model", "hooked_mod.Net", tmp_path / "hooked")
    with pytest.raises(ClassResolutionError):
        ModelContainer().load(path)
    assert calls == []


def test_a_class_defined_in_a_function_loads_only_when_passed_or_registered(
    tmp_path: Path,
) -> None:
    Local = local_model_class()
    container = ModelContainer()
    container.initialize(Local, {"in_features": 2, "out_features": 3})
    path = container.save(tmp_path)
    with pytest.raises(ClassResolutionError, match="<locals>"):
        ModelContainer().load(path)
    _, objs = ModelContainer().load(path, Local)
    assert type(objs.model) is Local
    register(Local)
    _, objs = ModelContainer().load(path)
    assert type(objs.model) is Local


def test_a_registered_name_resolves_before_anything_else(saved: str, tmp_path: Path) -> None:
    class Renamed(Model):
        pass

    register(Renamed, name="oldpkg.models.Net")
    path = rewrite_class(saved, "model", "oldpkg.models.Net", tmp_path / "renamed")
    _, objs = ModelContainer().load(path)
    assert type(objs.model) is Renamed


def test_register_works_as_a_decorator_and_checks_its_argument() -> None:
    @register
    class Decorated(nn.Linear):
        pass

    assert _resolve.resolve(class_name(Decorated), "model") is Decorated
    with pytest.raises(TypeError) as not_a_class:
        register(Model(**MODEL_KWARGS))  # type: ignore[type-var]
    assert isinstance(not_a_class.value, pytorch_saver.ArgumentTypeError)
    with pytest.raises(ClassResolutionError) as not_a_module:
        register(dict)
    assert not_a_module.value.kind == "UnknownName"
    with pytest.raises(ClassResolutionError, match="already registered") as taken:
        register(nn.Conv1d, name=class_name(Decorated))
    assert taken.value.kind == "DuplicateName"


def test_os_environ_is_untouched_by_resolution() -> None:
    before = dict(os.environ)
    with pytest.raises(ClassResolutionError):
        _resolve.resolve("os.environ", "model")
    assert dict(os.environ) == before
