"""The package's public names: one façade, a sorted ``__all__``, one error tree."""

from __future__ import annotations

import copy
import importlib.metadata
import pickle
import subprocess
import sys

import pytest
import pytorch_saver
from pytorch_saver import (
    ArgumentTypeError,
    ClassResolutionError,
    FormatError,
    InitializationError,
    InvalidArgumentError,
    LayerSpecError,
    ManagerLockedError,
    MetadataError,
    PytorchSaverError,
    StateMismatchError,
    StorageError,
    TypedValueError,
    UnsafePickleError,
    UnsupportedVersionError,
    UsageError,
)

PUBLIC = {
    "ArgumentTypeError",
    "AsyncSave",
    "Checkpoint",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointSkippedWarning",
    "ClassResolutionError",
    "Counters",
    "FORMAT_VERSION",
    "FormatError",
    "InitializationError",
    "InvalidArgumentError",
    "LayerSpecError",
    "ManagerLockedError",
    "MetadataError",
    "ModelContainer",
    "ModelObjects",
    "PytorchSaverError",
    "RNG",
    "Spec",
    "StateMismatchError",
    "StorageError",
    "TypedValueError",
    "UnsafePickleError",
    "UnsupportedVersionError",
    "UsageError",
    "__version__",
    "class_name",
    "convert",
    "read_checkpoint",
    "register",
    "register_codec",
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
    assert pytorch_saver.__version__ == "0.2.0"
    # pyproject.toml reads the version from the package: one definition.
    assert importlib.metadata.version("pytorch-saver") == pytorch_saver.__version__
    assert pytorch_saver.FORMAT_VERSION == 2


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (InitializationError, RuntimeError),
        (FormatError, ValueError),
        (UnsupportedVersionError, FormatError),
        (ClassResolutionError, ValueError),
        (StateMismatchError, ValueError),
        (MetadataError, ValueError),
        (TypedValueError, ValueError),
        (UnsafePickleError, ValueError),
        (LayerSpecError, ValueError),
        (UsageError, RuntimeError),
        (ManagerLockedError, RuntimeError),
        (InvalidArgumentError, ValueError),
        (ArgumentTypeError, TypeError),
        (ArgumentTypeError, InvalidArgumentError),
    ],
)
def test_every_error_is_a_pytorch_saver_error_and_its_builtin(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, PytorchSaverError)
    assert issubclass(error, builtin)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InitializationError, "Factory"),
        (UnsupportedVersionError, "UnsupportedVersion"),
        (ClassResolutionError, "UnknownName"),
        (StateMismatchError, "StateMismatch"),
        (MetadataError, "InvalidMetadata"),
        (TypedValueError, "TypedValue"),
        (UnsafePickleError, "UnsafePickle"),
        (LayerSpecError, "InvalidKwargs"),
        (UsageError, "Usage"),
        (ManagerLockedError, "Locked"),
        (StorageError, "Storage"),
        (InvalidArgumentError, "InvalidArgument"),
        (ArgumentTypeError, "InvalidArgument"),
    ],
)
def test_every_error_has_a_kind_a_raise_site_may_refine(
    error: type[PytorchSaverError], kind: str
) -> None:
    assert error.kind == kind
    assert error("message").kind == kind
    assert error("message", kind="Other").kind == "Other"
    assert error.kind == kind  # the instance's kind does not change the class's


def test_a_format_error_is_built_with_a_kind() -> None:
    with pytest.raises(TypeError):
        FormatError("no kind")  # type: ignore[call-arg]
    error = FormatError("truncated file: ...", kind="Truncated")
    assert (error.kind, str(error)) == ("Truncated", "truncated file: ...")


@pytest.mark.parametrize(
    "error",
    [
        FormatError("bad", kind="CrcMismatch"),
        UnsupportedVersionError("format version 2"),
        MetadataError("reserved", kind="ReservedMetadataKey"),
        UsageError("no model", kind="NotInitialized"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_keep_their_kind_through_pickle_and_copy(error: PytorchSaverError) -> None:
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(again) is type(error)
        assert (again.kind, again.args) == (error.kind, error.args)


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
