"""Format versions 2 and 1 of pytorch-saver files alone (``src/format/``,
module for module): the ZIP layout (``zip``), the ``metadata.json`` schema
(``metadata``), the typed values of version 2 (``typed``), the safetensors
members (``tensors``), strict JSON (``json``), the validating reader
(``reader``) and the atomic, durable writer (``writer``).
``docs/FORMAT.md`` is the normative text. A file is a ZIP of 64-byte
aligned STORED members: ``metadata.json``, ``model.safetensors`` and, for
a training checkpoint, ``optimizer.safetensors`` and (version 2)
``extra.safetensors``.
"""

from __future__ import annotations

from typing import Final

# The members a file may hold, in the order they must appear. Defined
# before the submodules are imported: they import these from the package.
METADATA_MEMBER: Final = "metadata.json"
"""Every non-tensor value."""
MODEL_MEMBER: Final = "model.safetensors"
"""The model's state dict."""
OPTIMIZER_MEMBER: Final = "optimizer.safetensors"
"""Per-parameter optimizer state tensors."""
EXTRA_MEMBER: Final = "extra.safetensors"
"""The tensors of the extra training state (version 2)."""
MEMBER_ORDER: Final = (METADATA_MEMBER, MODEL_MEMBER, OPTIMIZER_MEMBER, EXTRA_MEMBER)

from .metadata import (  # noqa: E402
    FORMAT_VERSION,
    INTERNALS_KEY,
    MAX_METADATA_BYTES,
    RESERVED_KEYS,
    SUPPORTED_VERSIONS,
    ExtraEntry,
    ManagerRecord,
    Metadata,
)
from .reader import Checkpoint, CheckpointReader, Scan, TensorMember, read_checkpoint  # noqa: E402
from .tensors import DTYPES, DTYPES_BY_NAME, Dtype, TensorEntry, check_bool_bytes  # noqa: E402
from .writer import _write_checkpoint as _write_checkpoint  # noqa: E402
from .writer import write_checkpoint  # noqa: E402
from .zip import ALIGNMENT  # noqa: E402

_DTYPES_BY_NAME: Final = DTYPES_BY_NAME
"""The name tests/test_format.py knows the table by."""

__all__ = [
    "ALIGNMENT",
    "DTYPES",
    "EXTRA_MEMBER",
    "FORMAT_VERSION",
    "INTERNALS_KEY",
    "MAX_METADATA_BYTES",
    "MEMBER_ORDER",
    "METADATA_MEMBER",
    "MODEL_MEMBER",
    "OPTIMIZER_MEMBER",
    "RESERVED_KEYS",
    "SUPPORTED_VERSIONS",
    "Checkpoint",
    "CheckpointReader",
    "Dtype",
    "ExtraEntry",
    "ManagerRecord",
    "Metadata",
    "Scan",
    "TensorEntry",
    "TensorMember",
    "check_bool_bytes",
    "read_checkpoint",
    "write_checkpoint",
]
