"""The exception tree of pytorch_saver. Every error the package raises on
purpose is a PytorchSaverError; each leaf also inherits the builtin it
resembles, so that code written for the original package (which raised
ValueError, RuntimeError) keeps working::

    PytorchSaverError
    +-- InitializationError(RuntimeError)  a constructor failed; __cause__ is why
    +-- FormatError(ValueError)            the file is not a valid checkpoint
    |   +-- UnsupportedVersionError        ... of a format version this package does not read
    +-- ClassResolutionError(ValueError)   a class not allowed, not found, or of the wrong kind
    +-- StateMismatchError(ValueError)     saved state does not fit the object it is loaded into
    +-- MetadataError(ValueError)          metadata or kwargs that cannot be saved
    +-- UnsafePickleError(ValueError)      an old-format pickle asks for something not allowed
    +-- LayerSpecError(ValueError)         a Sequential layer list that breaks docs/MODELS.md
"""

from __future__ import annotations


class PytorchSaverError(Exception):
    """Base class of every error pytorch_saver raises on purpose."""


class InitializationError(PytorchSaverError, RuntimeError):
    """A model, optimizer or scheduler constructor raised; the original
    exception is ``__cause__``."""


class FormatError(PytorchSaverError, ValueError):
    """The file is not a valid pytorch-saver checkpoint. The message names
    the member, tensor or byte range at fault."""


class UnsupportedVersionError(FormatError):
    """The file declares a format version this package does not read."""


class ClassResolutionError(PytorchSaverError, ValueError):
    """A class name from a file that is not allowed or not found, or a class
    that is not of the expected kind (``nn.Module``, ``Optimizer``, LR
    scheduler). The message says how to allow it."""


class StateMismatchError(PytorchSaverError, ValueError):
    """Saved state that does not fit the object it is loaded into."""


class MetadataError(PytorchSaverError, ValueError):
    """Metadata or constructor kwargs that cannot be saved: a reserved key,
    or a value JSON cannot represent. Nothing was written."""


class UnsafePickleError(PytorchSaverError, ValueError):
    """A checkpoint of the original package whose pickle asks for anything
    beyond plain tensors and containers. Nothing from it was executed."""


class LayerSpecError(PytorchSaverError, ValueError):
    """A layer list that :class:`pytorch_saver.models.Sequential` refuses
    (docs/MODELS.md): ``layers`` missing or empty, another kwarg, a layer that
    is not an object or has an unknown ``type``, an argument the type does not
    take, a required argument missing, or a value of the wrong kind or out of
    range. The message names the layer's index and type and the rule. Raised
    before any module or tensor exists."""
