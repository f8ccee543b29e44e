"""The package's public names: one façade, a sorted ``__all__``, one error tree."""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytorch_saver
from pytorch_saver import (
    ClassResolutionError,
    FormatError,
    InitializationError,
    LayerSpecError,
    MetadataError,
    PytorchSaverError,
    StateMismatchError,
    UnsafePickleError,
    UnsupportedVersionError,
)

PUBLIC = {
    "Checkpoint",
    "ClassResolutionError",
    "FORMAT_VERSION",
    "FormatError",
    "InitializationError",
    "LayerSpecError",
    "MetadataError",
    "ModelContainer",
    "ModelObjects",
    "PytorchSaverError",
    "StateMismatchError",
    "UnsafePickleError",
    "UnsupportedVersionError",
    "__version__",
    "class_name",
    "read_checkpoint",
    "register",
    "upgrade",
}


def test_all_is_sorted() -> None:
    assert sorted(pytorch_saver.__all__) == pytorch_saver.__all__


def test_the_exact_public_names() -> None:
    assert set(pytorch_saver.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(pytorch_saver, name), name
    public_attributes = {
        name
        for name in vars(pytorch_saver)
        if not name.startswith("_") and not isinstance(getattr(pytorch_saver, name), type(sys))
    }
    assert public_attributes <= PUBLIC


def test_version_and_format_version() -> None:
    assert pytorch_saver.__version__ == "0.1.0"
    assert pytorch_saver.FORMAT_VERSION == 1


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (InitializationError, RuntimeError),
        (FormatError, ValueError),
        (UnsupportedVersionError, FormatError),
        (ClassResolutionError, ValueError),
        (StateMismatchError, ValueError),
        (MetadataError, ValueError),
        (UnsafePickleError, ValueError),
        (LayerSpecError, ValueError),
    ],
)
def test_every_error_is_a_pytorch_saver_error_and_its_builtin(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, PytorchSaverError)
    assert issubclass(error, builtin)


def test_the_builtin_models_module() -> None:
    from pytorch_saver.models import MLP

    model = MLP(in_dim=4, hidden_dim=8, n_classes=3)
    assert list(model.state_dict()) == [
        "fc1.weight",
        "fc1.bias",
        "hidden_layers.0.weight",
        "hidden_layers.0.bias",
        "hidden_layers.2.weight",
        "hidden_layers.2.bias",
        "hidden_layers.4.weight",
        "hidden_layers.4.bias",
    ]
    assert pytorch_saver.class_name(MLP) == "pytorch_saver.models.MLP"


def test_the_command_line_has_help() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytorch_saver", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0
    assert "upgrade" in run.stdout and "inspect" in run.stdout
