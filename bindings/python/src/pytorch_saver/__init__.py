"""pytorch_saver: checkpoints of PyTorch training state (model, optimizer, LR
scheduler, with their class names and constructor kwargs, and any extra state
a run needs to resume exactly) in one format that Python, Rust, C, C++ and Go
read and write (format v2, and v1; docs/FORMAT.md).

Example (``Model`` is your ``nn.Module`` subclass)::

    from pytorch_saver import ModelContainer
    container = ModelContainer()
    # scheduler class and kwargs optional
    objs = container.initialize(Model, model_kwargs, torch.optim.Adam, optim_kwargs)
    path = container.save("./", "tutorial", loss=0.55, epoch=5)   # ./tutorial_checkpoint_<ts>.zip
    path = container.save_inference("./", "tutorial")
    metadata, objs = ModelContainer().load(path)  # README form: no classes
    # classes given
    metadata, objs = ModelContainer().load(path, Model, torch.optim.Adam, Scheduler)
    # extra state: the RNGs, an AMP scaler, counters (pytorch_saver.extra_state)
    rng = container.track("rng", RNG())
    metadata, objs = ModelContainer().load(path, track={"rng": rng})

Kwargs may hold tuples, classes, dtypes, dataclasses, ``argparse.Namespace``,
Hugging Face configs and objects of codecs registered with
:func:`register_codec` (docs/FORMAT.md 11.2). The child schedulers of
``SequentialLR`` and ``ChainedScheduler`` are given as :class:`Spec` (or
``{"class": cls, "kwargs": {...}}``) and built over the optimizer.

Loading never executes code from a file: class names resolve only to
registered classes (:func:`register`), torch's own classes, the built-in
models :class:`pytorch_saver.models.MLP` and
:class:`pytorch_saver.models.Sequential` (a model described by a JSON layer
list, docs/MODELS.md), classes of modules already imported, and modules the
caller allows (``load(path, allow=["mypkg.models"])``).
:func:`upgrade` converts files of the original package (0.1.x);
:func:`convert` converts ``torch.save`` files (read without unpickling
anything but tensors and plain containers), safetensors files, Hugging Face
model directories and 0.1.x files into this format, and this format out to
safetensors and Hugging Face directories.
:class:`CheckpointManager` keeps a series of checkpoints in a directory
(retention, pins, asynchronous saves, resuming from the newest good one).
"""

from ._container import ModelContainer, ModelObjects, upgrade
from ._convert import convert
from ._errors import (
    ArgumentTypeError,
    CheckpointSkippedWarning,
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
from ._format import FORMAT_VERSION, Checkpoint, read_checkpoint
from ._manager import AsyncSave, CheckpointInfo, CheckpointManager
from ._resolve import class_name, register
from ._typed_kwargs import Spec, register_codec
from ._version import __version__
from .extra_state import RNG, Counters

__all__ = [
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
]
