"""The exception tree of pytorch_saver, the Python side of the crate's error
types (``src/error.rs``, ``src/format/error.rs``). Every error the package
raises on purpose is a PytorchSaverError; each leaf also inherits the
builtin it resembles, so that code written for the original package (which
raised ValueError, RuntimeError, TypeError) keeps working::

    PytorchSaverError
    +-- InitializationError(RuntimeError)  a constructor failed; __cause__ is why
    +-- FormatError(ValueError)            the file is not a valid checkpoint
    |   +-- UnsupportedVersionError        ... of a format version this package does not read
    +-- ClassResolutionError(ValueError)   a class not allowed, not found, or of the wrong kind
    +-- StateMismatchError(ValueError)     saved state does not fit the object it is loaded into
    +-- MetadataError(ValueError)          metadata or kwargs that cannot be saved
    +-- TypedValueError(ValueError)        a typed kwarg or extra state that cannot be loaded
    +-- UnsafePickleError(ValueError)      a pickle asks for a global that is not allowed
    +-- LayerSpecError(ValueError)         a Sequential layer list that breaks docs/MODELS.md
    +-- UsageError(RuntimeError)           a call the container's current state does not allow
    +-- ManagerLockedError(RuntimeError)   another checkpoint manager holds the directory's lock
    +-- StorageError                       object storage refused or could not be reached
    +-- InvalidArgumentError(ValueError)   an argument the call does not accept
        +-- ArgumentTypeError(TypeError)   ... because of its type

Every error has a ``kind``: a stable identifier of what failed, never
renamed, the same string the Rust crate, the C ABI (``pts_error_kind``),
C++ and Go report for the same failure:

- a :class:`FormatError` has the name of the Rust ``FormatError`` variant
  that the Rust reader reports for the same check (docs/FORMAT.md section
  9): ``"Truncated"``, ``"CrcMismatch"``, ``"Schema"``, ``"TensorHeader"``,
  ... (``"UnsupportedVersion"`` for :class:`UnsupportedVersionError`; ``"Io"``
  for a file that is not a regular file, that shrank or could not be
  mapped). State internals that pass the schema but cannot be loaded (an
  unknown ``__float__`` tag, milestones that are not integers) are
  ``"InvalidState"``, as the Rust loader reports them. A file of the
  original 0.1 package, which only this package reads, is refused with the
  variant of the same fault where there is one (``"MissingMember"``,
  ``"UnexpectedMember"``, ``"DuplicateMember"``, ``"TooLarge"``, ``"Json"``)
  and ``"InvalidLegacy"`` for a ZIP or pickle that cannot be parsed;
- the other classes have the name of the Rust ``Error`` variant
  (``Error::kind()``) as their class-level default, and a raise site may
  name a finer one:

  ======================  ==================================================
  class                   kind
  ======================  ==================================================
  InitializationError     ``"Factory"``; ``"InvalidKwargs"`` when the kwargs
                          themselves are refused before anything is built
  ClassResolutionError    ``"UnknownName"``; ``"DuplicateName"`` for a name
                          :func:`register` already gave another class
  StateMismatchError      ``"StateMismatch"``
  MetadataError           ``"InvalidMetadata"``; ``"ReservedMetadataKey"``
  TypedValueError         ``"TypedValue"`` (FORMAT.md 11.2: what the reader
                          accepts but a loader cannot turn into an object)
  UnsafePickleError       ``"UnsafePickle"`` (a ``torch.save`` file or a 0.1
                          file read by ``convert``; Rust's
                          ``Error::UnsafePickle``)
  LayerSpecError          ``"InvalidKwargs"``
  UsageError              ``"Usage"``; ``"NotInitialized"`` for a call that
                          needs a model before there is one
  ManagerLockedError      ``"Locked"``
  StorageError            ``"Storage"``
  InvalidArgumentError    ``"InvalidArgument"`` (the C ABI's kind for an
                          argument check); ``"InvalidInput"`` for what the
                          writer cannot write (Rust's
                          ``FormatError::InvalidInput``); ``"Usage"`` for a
                          scheduler class given without an optimizer class
  ArgumentTypeError       ``"InvalidArgument"``
  ======================  ==================================================
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentTypeError",
    "CheckpointSkippedWarning",
    "ClassResolutionError",
    "FormatError",
    "InitializationError",
    "InvalidArgumentError",
    "LayerSpecError",
    "ManagerLockedError",
    "MetadataError",
    "PytorchSaverError",
    "StateMismatchError",
    "StorageError",
    "TypedValueError",
    "UnsafePickleError",
    "UnsupportedVersionError",
    "UsageError",
]


def _rebuild(cls: type[PytorchSaverError], args: tuple[Any, ...], kind: str) -> PytorchSaverError:
    return cls(*args, kind=kind)


class PytorchSaverError(Exception):
    """Base class of every error pytorch_saver raises on purpose; never
    raised itself. ``kind`` (module docstring) says what failed."""

    kind: str = "Error"

    def __init__(self, *args: object, kind: str | None = None) -> None:
        super().__init__(*args)
        if kind is not None:
            self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        # The default (type, args) would lose the kind, and FormatError
        # cannot be built without one.
        state = {k: v for k, v in vars(self).items() if k != "kind"}
        return (_rebuild, (type(self), self.args, self.kind), state or None)


class InitializationError(PytorchSaverError, RuntimeError):
    """A model, optimizer or scheduler constructor raised; the original
    exception is ``__cause__``. Also kwargs refused before anything is
    built (kind ``"InvalidKwargs"``)."""

    kind = "Factory"


class FormatError(PytorchSaverError, ValueError):
    """The file is not a valid pytorch-saver checkpoint. The message names
    the member, tensor or byte range at fault; ``kind`` names the check that
    failed, as the Rust reader names it (module docstring)."""

    def __init__(self, *args: object, kind: str) -> None:
        super().__init__(*args, kind=kind)


class UnsupportedVersionError(FormatError):
    """The file declares a format version this package does not read."""

    kind = "UnsupportedVersion"

    def __init__(self, *args: object, kind: str = "UnsupportedVersion") -> None:
        super().__init__(*args, kind=kind)


class ClassResolutionError(PytorchSaverError, ValueError):
    """A class name from a file that is not allowed or not found, or a class
    that is not of the expected kind (``nn.Module``, ``Optimizer``, LR
    scheduler). The message says how to allow it."""

    kind = "UnknownName"


class StateMismatchError(PytorchSaverError, ValueError):
    """Saved state that does not fit the object it is loaded into."""

    kind = "StateMismatch"


class MetadataError(PytorchSaverError, ValueError):
    """Metadata or constructor kwargs that cannot be saved: a reserved key,
    or a value JSON cannot represent. Nothing was written."""

    kind = "InvalidMetadata"


class TypedValueError(PytorchSaverError, ValueError):
    """A typed value of a file (FORMAT.md 11.2) that cannot become a Python
    object: a codec that is not registered, a codec's ``decode`` failing, a
    ``dict`` tag whose keys repeat, a ``callable`` the caller did not pass,
    a tag where the format allows none. The message names the kwarg or the
    extra-state path. Raised before any state is loaded."""

    kind = "TypedValue"


class UnsafePickleError(PytorchSaverError, ValueError):
    """A ``torch.save`` file or a checkpoint of the original package whose
    pickle asks for anything beyond plain tensors and containers. Nothing
    from it was executed."""

    kind = "UnsafePickle"


class LayerSpecError(PytorchSaverError, ValueError):
    """A layer list that :class:`pytorch_saver.models.Sequential` refuses
    (docs/MODELS.md): ``layers`` missing or empty, another kwarg, a layer that
    is not an object or has an unknown ``type``, an argument the type does not
    take, a required argument missing, or a value of the wrong kind or out of
    range. The message names the layer's index and type and the rule. Raised
    before any module or tensor exists."""

    kind = "InvalidKwargs"


class UsageError(PytorchSaverError, RuntimeError):
    """A call that the container's current state does not allow: saving or
    restoring before anything was initialized or loaded."""

    kind = "Usage"


class ManagerLockedError(PytorchSaverError, RuntimeError):
    """A checkpoint manager was opened on a directory and prefix whose lock
    another live manager holds, in this process or another (FORMAT.md
    12.2)."""

    kind = "Locked"


class StorageError(PytorchSaverError):
    """A checkpoint on object storage (an ``s3://`` URL, or another
    fsspec protocol for reading) could not be read or written: a missing
    bucket or object, credentials refused, an endpoint that does not
    answer, a scheme no installed package handles, or another writer that
    published the same name first. The message names the URL. Not an
    ``OSError``: a checkpoint manager resuming from storage raises it
    instead of skipping checkpoints as unreadable."""

    kind = "Storage"


class InvalidArgumentError(PytorchSaverError, ValueError):
    """An argument the call does not accept: a value out of its domain
    (a file name prefix with a ``/``, a tensor of a dtype format v1 does not
    store, a scheduler class without an optimizer class). Raised before
    anything was changed or written."""

    kind = "InvalidArgument"


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument of a type the call does not take (no model class, kwargs
    that are not a mapping with str keys, ``register`` of a non-class). A
    ``TypeError``, as such an argument would be in plain Python, and also an
    :class:`InvalidArgumentError`."""


class CheckpointSkippedWarning(UserWarning):
    """A checkpoint manager skipped a checkpoint it could not load while
    resuming (FORMAT.md 12.5); the message names the file and the error."""
