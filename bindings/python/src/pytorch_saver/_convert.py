"""``convert``: other checkpoint files into this format, and this format out
to safetensors files and Hugging Face model directories.

Inputs, detected by their content (never their name):

- a file of this format (any version, any kind);
- a ``torch.save`` archive of a state dict or of a training dict, read by
  the restricted unpickler of ``_torch_file.py`` (never ``torch.load``);
- a file of the original package (0.1.x), read by ``_legacy.py``;
- a safetensors file;
- a Hugging Face model directory: ``config.json`` with
  ``model.safetensors``, or shards listed by
  ``model.safetensors.index.json``.

A training dict holds the model's state dict under ``model``,
``model_state_dict`` or ``state_dict``, the optimizer's under
``optimizer``, ``optimizer_state_dict``, ``optim_state_dict`` or ``optim``,
the scheduler's under ``scheduler``, ``scheduler_state_dict`` or
``lr_scheduler``; its other plain values (``epoch``, ``loss``) become user
metadata.

Every output is written atomically: to a temporary name beside it, synced,
then linked (a file) or renamed (a directory) to its name, which must not
exist; nothing is left under that name on failure.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shutil
import struct
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final, Literal

import torch
from torch import nn

from ._container import ModelContainer
from ._errors import (
    ArgumentTypeError,
    FormatError,
    InvalidArgumentError,
    StateMismatchError,
)
from ._format import RESERVED_KEYS, CheckpointReader, read_checkpoint, write_checkpoint
from ._format.json import JsonError, parse_object
from ._format.metadata import Internals, Metadata, Producer, check_user_keys
from ._format.publish import fsync_directory, publish_directory, publish_file
from ._format.tensors import MAX_TENSOR_HEADER_BYTES, build_header, parse_header, writable_bytes
from ._legacy import is_legacy, read_legacy
from ._progress import ProgressCallback, Tracker
from ._resolve import check_kind
from ._state import check_positional_state, kwargs_from_json
from ._torch_file import is_torch_zip, read_torch_file, storage_bytes
from ._typed_kwargs import Decoder

__all__ = ["TARGETS", "convert"]

Target = Literal["pytorch-saver", "safetensors", "hf"]
TARGETS: Final[tuple[Target, ...]] = ("pytorch-saver", "safetensors", "hf")

MODEL_KEYS: Final = ("model", "model_state_dict", "state_dict")
OPTIMIZER_KEYS: Final = ("optimizer", "optimizer_state_dict", "optim_state_dict", "optim")
SCHEDULER_KEYS: Final = ("scheduler", "scheduler_state_dict", "lr_scheduler")

HF_CONFIG: Final = "config.json"
HF_WEIGHTS: Final = "model.safetensors"
HF_INDEX: Final = "model.safetensors.index.json"
_MAX_JSON_BYTES: Final = 64 << 20
_CHUNK: Final = 16 << 20

StrPath = str | os.PathLike[str]


def _foreign(path: str, reason: str) -> FormatError:
    return FormatError(f"{path}: {reason}", kind="InvalidForeign")


@dataclass
class _Contents:
    """What an input holds, in the objects PyTorch uses."""

    source: str
    """What the input is, for messages."""
    model: dict[str, torch.Tensor]
    model_class: type[nn.Module] | None = None
    model_kwargs: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    """An ``Optimizer.state_dict()``."""
    optim_class: Any = None
    optim_kwargs: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    """An ``LRScheduler.state_dict()``."""
    scheduler_class: Any = None
    scheduler_kwargs: dict[str, Any] | None = None
    user: dict[str, Any] = field(default_factory=dict)
    config: Any = None
    """A Hugging Face config, when the input has one."""
    architecture: str | None = None
    """The model class's name for a Hugging Face ``config.json``."""


# ---------------------------------------------------------------------------
# Detection


def _is_safetensors(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except IsADirectoryError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n: int = struct.unpack("<Q", head[:8])[0]
    return n <= MAX_TENSOR_HEADER_BYTES and 8 + n <= size


def _detect(path: str) -> str:
    """``"hf"``, ``"torch"``, ``"legacy"``, ``"safetensors"`` or ``"this"``."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, HF_CONFIG)):
            raise _foreign(path, f"a directory without {HF_CONFIG}: not a Hugging Face model")
        return "hf"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":
        if is_torch_zip(path):
            return "torch"
        if is_legacy(path):
            return "legacy"
        return "this"
    if _is_safetensors(path):
        return "safetensors"
    if magic[:1] == b"\x80":
        raise _foreign(
            path,
            "a pickle outside a ZIP archive (torch.save with _use_new_zipfile_serialization="
            "False, or pickle.dump): not supported; save it again with torch.save's default",
        )
    raise _foreign(
        path,
        "not a file this converter reads (pytorch-saver, torch.save, safetensors, "
        "pytorch-saver 0.1 or a Hugging Face directory)",
    )


def _input_bytes(kind: str, path: str) -> int:
    """The bytes of tensor data the input holds, from its directory or
    headers alone (the total of a conversion's progress is twice this:
    reading, then writing)."""
    if kind == "hf":
        return sum(os.path.getsize(p) for p in _hf_shards(path))
    if kind == "torch":
        return storage_bytes(path)
    if kind == "legacy":
        with zipfile.ZipFile(path) as zf:
            return sum(i.file_size for i in zf.infolist())
    return os.path.getsize(path)


# ---------------------------------------------------------------------------
# Readers


def _plain(value: Any) -> bool:
    """Whether ``value`` is plain JSON (user metadata)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def _state_dict(value: Any, path: str, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise _foreign(path, f"{where} is not a state dict (names to tensors)")
    return dict(value)


def _one_of(obj: dict[Any, Any], keys: tuple[str, ...], path: str) -> tuple[str, Any] | None:
    present = [k for k in keys if k in obj]
    if len(present) > 1:
        raise _foreign(path, f"the training dict has both {present[0]!r} and {present[1]!r}")
    return (present[0], obj[present[0]]) if present else None


def _from_object(obj: Any, path: str, source: str) -> _Contents:
    """A state dict or a training dict, unpickled, as contents."""
    if not isinstance(obj, dict):
        raise _foreign(path, f"holds a {type(obj).__name__}, not a state dict or a training dict")
    if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return _Contents(f"{source} state dict", dict(obj))
    model = _one_of(obj, MODEL_KEYS, path)
    if model is None:
        key = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), next(iter(obj)))
        raise _foreign(
            path,
            f"neither a state dict nor a training dict: {key!r} holds a "
            f"{type(obj[key]).__name__}, and no key names the model's state dict "
            f"({', '.join(MODEL_KEYS)})",
        )
    contents = _Contents(f"{source} training dict", _state_dict(model[1], path, repr(model[0])))
    used = {model[0]}
    optimizer = _one_of(obj, OPTIMIZER_KEYS, path)
    if optimizer is not None and optimizer[1] is not None:
        if not isinstance(optimizer[1], dict) or not {"state", "param_groups"} <= set(optimizer[1]):
            raise _foreign(path, f"{optimizer[0]!r} is not an optimizer's state_dict()")
        contents.optimizer = optimizer[1]
    scheduler = _one_of(obj, SCHEDULER_KEYS, path)
    if scheduler is not None and scheduler[1] is not None:
        if not isinstance(scheduler[1], dict):
            raise _foreign(path, f"{scheduler[0]!r} is not a scheduler's state_dict()")
        contents.scheduler = scheduler[1]
    used |= {found[0] for found in (optimizer, scheduler) if found is not None}
    for key, value in obj.items():
        if key in used:
            continue
        if not isinstance(key, str) or not _plain(value):
            raise _foreign(
                path,
                f"the training dict's {key!r} holds a {type(value).__name__}, which is neither "
                "a state dict nor a plain value (a number, a string, a list) to keep as metadata",
            )
        contents.user[key] = _json_value(value)
    return contents


def _read_safetensors(
    path: str, tracker: Tracker, which: str = "safetensors file"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors (in its header's order) and metadata."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size

        def read(start: int, length: int, what: str) -> bytes:
            f.seek(start)
            data = f.read(length)
            if len(data) != length:
                raise _foreign(path, f"{what}: truncated")
            return data

        try:
            header, entries = parse_header(path, 0, size, read)
            raw = parse_object(header[8:])
        except FormatError as exc:
            raise _foreign(path, f"not a valid {which}: {exc}") from None
        except JsonError as exc:
            raise _foreign(path, f"not a valid {which}: {exc}") from None
        metadata = raw.get("__metadata__") or {}
        order = {name: i for i, name in enumerate(k for k in raw if k != "__metadata__")}
        tensors: dict[str, torch.Tensor] = {}
        for entry in sorted(entries, key=lambda e: order[e.name]):
            tensor = torch.empty(entry.shape, dtype=entry.dtype.torch_dtype)
            nbytes = entry.end - entry.start
            if nbytes:
                f.seek(entry.start)
                view = writable_bytes(tensor)
                at = 0
                while at < nbytes:
                    n = f.readinto(view[at : min(at + _CHUNK, nbytes)])
                    if not n:
                        raise _foreign(path, f"tensor {entry.name!r}: truncated")
                    at += n
                    tracker.advance(n)
            tensors[entry.name] = tensor
    return tensors, dict(metadata)


def _json_file(path: str) -> Any:
    with open(path, "rb") as f:
        data = f.read(_MAX_JSON_BYTES + 1)
    if len(data) > _MAX_JSON_BYTES:
        raise _foreign(path, f"larger than {_MAX_JSON_BYTES} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _foreign(path, f"not JSON: {exc}") from None


def _hf_shards(directory: str) -> list[str]:
    """The weight files of a Hugging Face directory, each once, each inside it."""
    single = os.path.join(directory, HF_WEIGHTS)
    index = os.path.join(directory, HF_INDEX)
    if os.path.isfile(index):
        return sorted(set(_hf_weight_map(directory).values()))
    if os.path.isfile(single):
        return [single]
    raise _foreign(directory, f"a Hugging Face directory without {HF_WEIGHTS} or {HF_INDEX}")


def _hf_weight_map(directory: str) -> dict[str, str]:
    """``model.safetensors.index.json``'s ``weight_map``: tensor -> shard path."""
    index_path = os.path.join(directory, HF_INDEX)
    index = _json_file(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _foreign(index_path, "no weight_map object")
    root = os.path.realpath(directory)
    out: dict[str, str] = {}
    for name, shard in weight_map.items():
        if (
            not isinstance(shard, str)
            or not shard
            or "/" in shard
            or "\\" in shard
            or shard in (".", "..")
        ):
            raise _foreign(
                index_path, f"tensor {name!r} is in {shard!r}, not a file of the directory"
            )
        full = os.path.join(directory, shard)
        if os.path.dirname(os.path.realpath(full)) != root or not os.path.isfile(full):
            raise _foreign(
                index_path, f"tensor {name!r} is in {shard!r}, not a file of the directory"
            )
        out[name] = full
    return out


def _read_hf_tensors(directory: str, tracker: Tracker) -> dict[str, torch.Tensor]:
    if not os.path.isfile(os.path.join(directory, HF_INDEX)):
        return _read_safetensors(os.path.join(directory, HF_WEIGHTS), tracker)[0]
    weight_map = _hf_weight_map(directory)
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        held, _ = _read_safetensors(shard, tracker, "safetensors shard")
        for name, tensor in held.items():
            if weight_map.get(name) != shard:
                raise _foreign(
                    shard,
                    f"holds tensor {name!r}, which the index puts "
                    f"{'nowhere' if name not in weight_map else 'in ' + weight_map[name]}",
                )
            tensors[name] = tensor
    missing = [n for n in weight_map if n not in tensors]
    if missing:
        raise _foreign(directory, f"the index lists tensors no shard holds: {missing[:5]}")
    return {name: tensors[name] for name in weight_map}


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise InvalidArgumentError(
            f"reading or writing a Hugging Face directory needs transformers: {exc}"
        ) from exc


def _read_hf(directory: str, tracker: Tracker) -> _Contents:
    config_json = _json_file(os.path.join(directory, HF_CONFIG))
    architectures = config_json.get("architectures") if isinstance(config_json, dict) else None
    if not (
        isinstance(architectures, list) and architectures and isinstance(architectures[0], str)
    ):
        raise _foreign(
            os.path.join(directory, HF_CONFIG), "no architectures naming the model class"
        )
    architecture = architectures[0]
    transformers = _transformers()
    # Reads config.json only: no code of the directory runs (no trust_remote_code).
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    contents = _Contents("Hugging Face model directory", _read_hf_tensors(directory, tracker))
    contents.config = config
    contents.architecture = architecture
    contents.model_kwargs = {"config": config}
    cls = getattr(transformers, architecture, None) if architecture.isidentifier() else None
    if cls is not None:
        contents.model_class = check_kind(cls, "model", f"transformers.{architecture}")
    return contents


def _read_this(
    path: str,
    allow: Iterable[str],
    classes: tuple[Any, Any, Any] | None,
    inference: bool,
    tracker: Tracker,
) -> _Contents:
    """A file of this format: its objects rebuilt when ``classes`` is given
    (``ModelContainer.load``'s model, optimizer and scheduler classes: all
    None to resolve the classes it names by the usual rules and ``allow``),
    else its tensors, user metadata and decoded model kwargs. Refuses
    optimizer or scheduler state the objects would leave behind, unless
    ``inference``."""
    with CheckpointReader(path) as reader:
        saved = reader.scan.metadata
    user = {k: v for k, v in saved.flat().items() if k not in RESERVED_KEYS}
    internals = saved.internals
    if internals.model_class is None or classes is None:
        checkpoint = read_checkpoint(path)
        tracker.advance(os.path.getsize(path))
        contents = _Contents(f"pytorch-saver {internals.kind} file", checkpoint.model, user=user)
        if saved.model_kwargs is not None and internals.model_class is not None:
            contents.architecture = internals.model_class.rpartition(".")[2]
            config = saved.model_kwargs.get("config")
            if isinstance(config, dict) and config.get("codec") == "hf_config":
                contents.config = Decoder(allow=allow).value(config, "model_kwargs['config']")
        return contents
    metadata, objs = ModelContainer().load(path, *classes, allow=allow)
    tracker.advance(os.path.getsize(path))
    for what, section, built, option in (
        ("optimizer", internals.optimizer, objs.optimizer, "optim_class (--optimizer)"),
        ("scheduler", internals.scheduler, objs.scheduler, "scheduler_class (--scheduler)"),
    ):
        if section is not None and built is None and not inference:
            raise InvalidArgumentError(
                f"{path} holds {what} state ({section.class_name}): give {option} too, or "
                "convert the model alone (inference=True, --inference)",
                kind="Usage",
            )
    contents = _Contents(
        f"pytorch-saver {internals.kind} file",
        objs.model.state_dict(),
        model_class=type(objs.model),
        model_kwargs=metadata["model_kwargs"],
        user=user,
    )
    if objs.optimizer is not None:
        contents.optimizer = objs.optimizer.state_dict()
        contents.optim_class = type(objs.optimizer)
        contents.optim_kwargs = metadata.get("optim_kwargs")
    if objs.scheduler is not None:
        contents.scheduler = objs.scheduler.state_dict()
        contents.scheduler_class = type(objs.scheduler)
        contents.scheduler_kwargs = metadata.get("scheduler_kwargs")
    return contents


def _read_legacy(path: str, tracker: Tracker) -> _Contents:
    legacy = read_legacy(path)
    tracker.advance(sum(t.numel() * t.element_size() for t in legacy.model_state_dict.values()))
    user = {k: v for k, v in legacy.metadata.items() if k not in RESERVED_KEYS}
    contents = _Contents("pytorch-saver 0.1 file", dict(legacy.model_state_dict), user=user)
    contents.optimizer = legacy.optim_state_dict
    contents.scheduler = legacy.scheduler_state_dict
    kwargs = legacy.metadata.get("model_kwargs")
    contents.model_kwargs = dict(kwargs) if isinstance(kwargs, dict) else None
    for key in ("optim_kwargs", "scheduler_kwargs"):
        saved = legacy.metadata.get(key)
        if isinstance(saved, dict):
            # Version 1's JSON: pairs (betas) as lists, as the original wrote them.
            setattr(contents, key, kwargs_from_json(saved))
    return contents


# ---------------------------------------------------------------------------
# Writers


def _tensor_chunks(tensor: torch.Tensor) -> Iterable[memoryview]:
    t = tensor.detach().to("cpu").contiguous()
    if not t.numel():
        return
    view = writable_bytes(t)
    for at in range(0, len(view), _CHUNK):
        yield view[at : at + _CHUNK]


def _write_safetensors_to(
    f: IO[bytes], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], tracker: Tracker
) -> None:
    """A safetensors file: data ordered and the header padded as this
    format's members are (FORMAT.md 4), with ``__metadata__``."""
    planned = build_header("safetensors file", tensors)
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    at = 0
    for t in planned.tensors:
        header[t.name] = {
            "dtype": t.dtype.name,
            "shape": list(t.shape),
            "data_offsets": [at, at + t.nbytes],
        }
        at += t.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-(8 + len(raw)) % 64)
    f.write(struct.pack("<Q", len(raw)) + raw)
    for t in planned.tensors:
        for chunk in _tensor_chunks(t.tensor):
            f.write(chunk)
            tracker.advance(len(chunk))


def _publish_file(out: str, write: Callable[[IO[bytes]], None]) -> None:
    """Writes ``out`` through a synced temporary file beside it, published
    under its name (which must not exist) by :func:`publish_file`."""
    directory = os.path.dirname(out) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    try:
        with open(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        publish_file(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):  # gone after a rename
            os.unlink(tmp)
    fsync_directory(directory)


def _safetensors_metadata(user: Mapping[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in user.items()}


def _shards(tensors: Mapping[str, torch.Tensor], max_size: int | None) -> list[list[str]]:
    """Tensor names per shard, in order, each shard at most ``max_size``
    bytes unless one tensor alone is larger (as transformers shards)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_size is not None and shards[-1] and size + nbytes > max_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_hf(out: str, contents: _Contents, max_shard_size: int | None, tracker: Tracker) -> None:
    config = contents.config
    if config is None:
        raise InvalidArgumentError(
            f"--to hf needs a Hugging Face config, and the {contents.source} has none: convert "
            "a Hugging Face directory, or a file whose model_kwargs hold one under 'config'",
            kind="Usage",
        )
    config_dict = config.to_dict()
    architecture = contents.architecture
    if contents.model_class is not None:
        architecture = contents.model_class.__name__
    if architecture is not None:
        config_dict["architectures"] = [architecture]
    directory = os.path.dirname(out) or "."
    tmp = tempfile.mkdtemp(dir=directory, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    try:
        _write_file(
            os.path.join(tmp, HF_CONFIG),
            lambda f: f.write((json.dumps(config_dict, indent=2, sort_keys=True) + "\n").encode()),
        )
        shards = _shards(contents.model, max_shard_size)
        if len(shards) == 1:
            _write_file(
                os.path.join(tmp, HF_WEIGHTS),
                lambda f: _write_safetensors_to(f, contents.model, {"format": "pt"}, tracker),
            )
        else:
            weight_map: dict[str, str] = {}
            for i, names in enumerate(shards, 1):
                shard = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                part = {n: contents.model[n] for n in names}
                _write_file(
                    os.path.join(tmp, shard),
                    lambda f, part=part: _write_safetensors_to(f, part, {"format": "pt"}, tracker),  # type: ignore[misc]
                )
                weight_map.update(dict.fromkeys(names, shard))
            total = sum(t.numel() * t.element_size() for t in contents.model.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            _write_file(
                os.path.join(tmp, HF_INDEX),
                lambda f: f.write((json.dumps(index, indent=2) + "\n").encode()),
            )
        fsync_directory(tmp)
        try:
            publish_directory(tmp, out)
        except FileExistsError:
            raise FileExistsError(f"{out} exists: convert never replaces an output") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(directory)


def _write_file(path: str, write: Callable[[IO[bytes]], object]) -> None:
    with open(path, "xb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _load_model(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``model`` strictly: every tensor of the model
    (but a tied alias of one that is there), nothing else, the same shapes."""
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    present = {
        (t.data_ptr(), tuple(t.shape), t.stride()) for k, t in expected.items() if k in state
    }
    missing = [
        k
        for k, t in expected.items()
        if k not in state and (t.data_ptr(), tuple(t.shape), t.stride()) not in present
    ]
    if missing or unexpected:
        raise StateMismatchError(
            f"the {source}'s model state does not fit {type(model).__name__}: missing "
            f"{missing[:10]}{'...' if len(missing) > 10 else ''}, unexpected "
            f"{unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise StateMismatchError(
                f"model tensor {key!r} has shape {list(tensor.shape)} in the {source}, "
                f"{type(model).__name__} has {list(expected[key].shape)}"
            )
    try:
        model.load_state_dict(dict(state), strict=False)
    except Exception as exc:
        raise StateMismatchError(
            f"loading the {source}'s model state failed: {type(exc).__name__}: {exc}"
        ) from exc


def _load_into(obj: Any, state: Any, what: str, source: str) -> None:
    try:
        obj.load_state_dict(state)
    except Exception as exc:
        raise StateMismatchError(
            f"loading the {source}'s {what} state failed: {type(exc).__name__}: {exc}"
        ) from exc


def _publish_checkpoint(out: str, save: Callable[[str], str]) -> None:
    """Saves into a temporary directory beside ``out`` (the writer syncs
    the file), then publishes the file as ``out`` (:func:`publish_file`)."""
    directory = os.path.dirname(out) or "."
    tmp = tempfile.mkdtemp(dir=directory, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    try:
        publish_file(save(tmp), out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_directory(directory)


def _write_pytorch_saver(out: str, contents: _Contents, inference: bool, tracker: Tracker) -> None:
    check_user_keys(contents.user)
    model_bytes = sum(t.numel() * t.element_size() for t in contents.model.values())
    if contents.model_class is None:
        metadata = Metadata(
            model_kwargs=None,
            timestamp=int(time.time()),
            internals=Internals(kind="weights", model_class=None, producer=Producer.this_package()),
            user=contents.user,
        )
        _publish_checkpoint(
            out, lambda d: write_checkpoint(d, None, metadata, contents.model, None)
        )
        tracker.advance(model_bytes)
        return
    container = ModelContainer()
    train = not inference
    optim_class = contents.optim_class if train and contents.optimizer else None
    scheduler_class = contents.scheduler_class if optim_class and contents.scheduler else None
    objs = container.initialize(
        contents.model_class,
        contents.model_kwargs,
        optim_class,
        contents.optim_kwargs if optim_class else None,
        scheduler_class,
        contents.scheduler_kwargs if scheduler_class else None,
    )
    _load_model(objs.model, contents.model, contents.source)
    if objs.optimizer is not None:
        assert contents.optimizer is not None
        state = check_positional_state(objs.optimizer, objs.model, contents.optimizer)
        _load_into(objs.optimizer, state, "optimizer", contents.source)
    if objs.scheduler is not None:
        _load_into(objs.scheduler, contents.scheduler, "scheduler", contents.source)
    if inference:
        _publish_checkpoint(out, lambda d: container.save_inference(d, None, **contents.user))
    else:
        _publish_checkpoint(out, lambda d: container.save(d, None, **contents.user))
    tracker.advance(model_bytes)


# ---------------------------------------------------------------------------
# The conversion


def _mapping(value: Mapping[str, Any] | None, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ArgumentTypeError(f"{what} must be a mapping with str keys, not {value!r}")
    return dict(value)


def _apply_options(
    contents: _Contents,
    model_class: Any,
    model_kwargs: dict[str, Any] | None,
    optim_class: Any,
    optim_kwargs: dict[str, Any] | None,
    scheduler_class: Any,
    scheduler_kwargs: dict[str, Any] | None,
    inference: bool,
) -> None:
    """The caller's classes and kwargs over what the input names; refuses
    state the output would leave behind."""
    if model_class is not None:
        contents.model_class = model_class
        if model_kwargs is not None or contents.model_kwargs is None:
            contents.model_kwargs = model_kwargs if model_kwargs is not None else {}
    elif model_kwargs is not None:
        if contents.model_class is None:
            raise InvalidArgumentError("model_kwargs given without model_class", kind="Usage")
        contents.model_kwargs = model_kwargs
    for what, cls, kwargs, option in (
        ("optimizer", optim_class, optim_kwargs, "optim_class (--optimizer)"),
        ("scheduler", scheduler_class, scheduler_kwargs, "scheduler_class (--scheduler)"),
    ):
        state = getattr(contents, what)
        if cls is not None:
            if state is None:
                raise StateMismatchError(
                    f"the {contents.source} holds no {what} state to load into {cls!r}"
                )
            setattr(contents, "optim_class" if what == "optimizer" else "scheduler_class", cls)
            kwargs_key = "optim_kwargs" if what == "optimizer" else "scheduler_kwargs"
            if kwargs is not None or getattr(contents, kwargs_key) is None:
                setattr(contents, kwargs_key, kwargs if kwargs is not None else {})
        known = getattr(contents, "optim_class" if what == "optimizer" else "scheduler_class")
        if state is not None and known is None and not inference:
            raise InvalidArgumentError(
                f"the {contents.source} holds {what} state, whose class it does not name: give "
                f"{option}{' and model_class (--model)' if contents.model_class is None else ''}, "
                "or convert the model alone (inference=True, --inference)",
                kind="Usage",
            )
    if contents.model_class is None and not inference and contents.optimizer is not None:
        raise InvalidArgumentError(
            f"the {contents.source} holds optimizer state: give model_class (--model) to keep it, "
            "or convert the model alone (inference=True, --inference)",
            kind="Usage",
        )


def _check_out(out: str, target: Target) -> None:
    if os.path.lexists(out):
        raise FileExistsError(f"{out} exists: convert never replaces an output")
    if target == "pytorch-saver" and not out.endswith(".zip"):
        raise InvalidArgumentError(
            f"{out}: a pytorch-saver file's name must end in .zip", kind="InvalidArgument"
        )
    directory = os.path.dirname(out) or "."
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory!r} does not exist")


def convert(
    src: StrPath,
    out: StrPath,
    *,
    to: Target = "pytorch-saver",
    model_class: type[nn.Module] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    optim_class: Callable[..., torch.optim.Optimizer] | None = None,
    optim_kwargs: Mapping[str, Any] | None = None,
    scheduler_class: Callable[..., Any] | None = None,
    scheduler_kwargs: Mapping[str, Any] | None = None,
    inference: bool = False,
    max_shard_size: int | None = None,
    allow: Iterable[str] = (),
    progress: ProgressCallback | None = None,
) -> str:
    """Convert ``src`` into ``out`` and return ``out``.

    ``src`` is detected by its content: a file of this format, a
    ``torch.save`` file of a state dict or a training dict (``{"model":
    ..., "optimizer": ..., "scheduler": ..., "epoch": 3}``; its pickle is
    read by a restricted unpickler that builds tensors and plain containers
    only, and refuses anything else with :class:`UnsafePickleError` before
    anything from it ran), a file of the original package (0.1.x), a
    safetensors file, or a Hugging Face model directory (``config.json``
    and ``model.safetensors`` or its shards).

    ``to="pytorch-saver"`` writes ``out`` (a name ending in ``.zip``): a
    checkpoint when the model class is known (``model_class``, or named by
    the input: a file of this format, the ``architectures`` of a Hugging
    Face ``config.json`` with the config as the kwarg ``config``), an
    inference file with ``inference=True``, else a weights file of the
    tensors and the input's plain metadata. The objects are built from the
    classes and kwargs, the model state loaded strictly, the optimizer's
    by position (``Optimizer.load_state_dict``), the scheduler's likewise.
    Optimizer or scheduler state whose class is not known is refused
    (:class:`InvalidArgumentError` naming the option to give) unless
    ``inference``. ``to="safetensors"`` writes the model's state dict as
    one safetensors file; ``to="hf"`` a Hugging Face directory ``out`` (it
    must not exist): ``config.json`` and ``model.safetensors``, or shards of
    at most ``max_shard_size`` bytes with their index.

    ``allow`` lists modules the classes a file of this format names may be
    imported from (as ``ModelContainer.load``). ``progress(done, total)``
    hears the bytes read and then written (``pytorch_saver._progress``).
    ``out`` is never replaced (``FileExistsError``) and never left half
    written.
    """
    if to not in TARGETS:
        raise InvalidArgumentError(f"to must be one of {', '.join(TARGETS)}, not {to!r}")
    src_str, out_str = os.fspath(src), os.fspath(out)
    if scheduler_class is not None and optim_class is None:
        raise InvalidArgumentError(
            "a scheduler needs an optimizer: scheduler_class given without optim_class",
            kind="Usage",
        )
    if max_shard_size is not None and (
        to != "hf" or not isinstance(max_shard_size, int) or max_shard_size <= 0
    ):
        raise InvalidArgumentError(
            f"max_shard_size is a positive number of bytes for to='hf', not {max_shard_size!r}"
        )
    if model_class is not None and not isinstance(model_class, type):
        raise ArgumentTypeError(f"model_class must be a class, not {model_class!r}")
    m_kwargs = _mapping(model_kwargs, "model_kwargs")
    o_kwargs = _mapping(optim_kwargs, "optim_kwargs")
    s_kwargs = _mapping(scheduler_kwargs, "scheduler_kwargs")
    _check_out(out_str, to)
    kind = _detect(src_str)
    tracker = Tracker(progress, 2 * _input_bytes(kind, src_str))
    if kind == "hf":
        contents = _read_hf(src_str, tracker)
    elif kind == "torch":
        contents = _from_object(
            read_torch_file(src_str, tracker.advance).obj, src_str, "torch.save"
        )
    elif kind == "legacy":
        contents = _read_legacy(src_str, tracker)
    elif kind == "safetensors":
        tensors, metadata = _read_safetensors(src_str, tracker)
        contents = _Contents("safetensors file", tensors, user=dict(metadata))
    else:
        classes = (model_class, optim_class, scheduler_class) if to == "pytorch-saver" else None
        contents = _read_this(src_str, allow, classes, inference, tracker)
    if to == "pytorch-saver":
        _apply_options(
            contents,
            model_class,
            m_kwargs,
            optim_class,
            o_kwargs,
            scheduler_class,
            s_kwargs,
            inference,
        )
        _write_pytorch_saver(out_str, contents, inference, tracker)
    elif to == "safetensors":
        user = {k: v for k, v in contents.user.items()}
        _publish_file(
            out_str,
            lambda f: _write_safetensors_to(
                f, contents.model, _safetensors_metadata(user), tracker
            ),
        )
    else:
        if model_class is not None:
            contents.model_class = model_class
        if m_kwargs is not None and "config" in m_kwargs:
            contents.config = m_kwargs["config"]
        _write_hf(out_str, contents, max_shard_size, tracker)
    tracker.finish()
    return out_str
