"""A :class:`~pytorch_saver.ModelContainer` whose model has distributed
parameters (DTensors) saves and loads the sharded form (docs/FORMAT.md
13.3): the model's state dict under ``model.``, the optimizer's tensors
under ``optimizer.``, and the metadata a single file would hold in the
index's ``container`` object, written by every rank through DCP with
:class:`Writer`; loading rebuilds the objects from that metadata,
distributes the model on the current process group's mesh (with the
placements recorded at save) and lets DCP reshard."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import (
    DTensor,
    Partial,
    Placement,
    Replicate,
    Shard,
    distribute_tensor,
)

from .._errors import FormatError, UsageError
from .._format.metadata import Metadata, to_json
from .._storage import ObjectURL, parse
from ._index import INDEX_NAME, Index
from ._location import Location
from ._reader import Reader
from ._writer import Writer

__all__ = [
    "is_distributed",
    "optimizer_templates",
    "save_sharded",
    "fully_shard_on",
]


def is_distributed(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def _placement_json(p: Placement) -> str:
    if isinstance(p, Shard):
        return f"S({p.dim})"
    if isinstance(p, Replicate):
        return "R"
    if isinstance(p, Partial):
        return "P"
    raise UsageError(f"cannot record the placement {p!r} of a sharded checkpoint", kind="Usage")


def placements_json(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``container.placements`` (FORMAT.md 13.3) of a model state dict."""
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        if isinstance(tensor, DTensor):
            out[name] = {
                "mesh_shape": list(tensor.device_mesh.shape),
                "placements": [_placement_json(p) for p in tensor.placements],
            }
    return out


def fully_shard_on(mesh: DeviceMesh) -> Callable[[nn.Module], nn.Module]:
    """What a sharded load does with the built model by default: FSDP2's
    ``fully_shard`` on ``mesh`` (every parameter ``Shard(0)``, as FSDP2
    saved it)."""
    from torch.distributed.fsdp import fully_shard

    def distribute(model: nn.Module) -> nn.Module:
        return cast("nn.Module", fully_shard(model, mesh=mesh))

    return distribute


def current_mesh() -> DeviceMesh | None:
    """A 1-D CPU mesh over the default process group, or None outside one
    (or in a group of one process)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return init_device_mesh("cpu", (dist.get_world_size(),))


def agreed(value: Any) -> Any:
    """Rank 0's ``value``, on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _free_location(folder: str, stem: str) -> str:
    parsed = parse(folder)
    for n in range(10_000):
        name = stem if n == 0 else f"{stem}-{n}"
        if isinstance(parsed, ObjectURL):
            candidate = parsed.child(name).url
        else:
            candidate = os.path.join(parsed, name)
        if Location(candidate).size(INDEX_NAME) is None and (
            isinstance(parsed, ObjectURL) or not os.path.lexists(candidate)
        ):
            return candidate
    raise FormatError(f"10000 checkpoints named {stem}-N exist in {folder}", kind="InvalidInput")


def save_sharded(
    metadata: Metadata,
    model_state: Mapping[str, torch.Tensor],
    optimizer_tensors: Mapping[str, torch.Tensor] | None,
    folder: str,
    stem: str,
) -> str:
    """Saves one container checkpoint, on every rank of the default group,
    to ``{folder}/{stem}`` (``-1``, ``-2`` when taken), and returns its
    index's path or URL."""
    location = agreed(_free_location(folder, stem) if _rank() == 0 else None)
    state: dict[str, Any] = {"model": dict(model_state)}
    if optimizer_tensors is not None:
        state["optimizer"] = dict(optimizer_tensors)
    container = {"metadata": to_json(metadata), "placements": placements_json(model_state)}
    dcp_save(state, storage_writer=Writer(location, _container=container))
    return Location(location).join(INDEX_NAME)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def optimizer_templates(
    index: Index, model: nn.Module, param_names: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Empty tensors for DCP to load the ``optimizer.`` tensors of ``index``
    into: distributed like their parameter when they have its shape."""
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, entry in index.tensors.items():
        if not name.startswith("optimizer."):
            continue
        key = name[len("optimizer.") :]
        parts = key.split(".")
        param = None
        if len(parts) >= 3 and parts[0] == "state" and parts[1].isdigit():
            i = int(parts[1])
            if i < len(param_names):
                param = params.get(param_names[i])
        dtype = entry.dtype.torch_dtype
        if isinstance(param, DTensor) and tuple(param.shape) == entry.shape:
            out[key] = distribute_tensor(
                torch.empty(entry.shape, dtype=dtype), param.device_mesh, param.placements
            )
        else:
            out[key] = torch.empty(entry.shape, dtype=dtype)
    return out


def load_state(
    location: str,
    model: nn.Module,
    optimizer_tensors: dict[str, torch.Tensor] | None,
    *,
    verify: bool,
) -> None:
    """Loads the model's state in place and fills ``optimizer_tensors``."""
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer_tensors is not None:
        state["optimizer"] = optimizer_tensors
    dcp_load(state, storage_reader=Reader(location, verify=verify))
    if optimizer_tensors is not None:
        optimizer_tensors.update(state["optimizer"])


def load_sharded(
    location: str,
    model_class: type[nn.Module] | None,
    optim_class: Callable[..., torch.optim.Optimizer] | None,
    scheduler_class: Callable[..., Any] | None,
    *,
    allow: Any,
    classes: Any,
    callables: Mapping[str, Any] | None,
    distribute: Callable[[nn.Module], nn.Module] | None,
    verify: bool,
    version: int,
) -> tuple[dict[str, Any], Any]:
    """``ModelContainer.load`` of a sharded container checkpoint: (flat
    metadata, the built objects as ``_Built``)."""
    from .._composite import composite_state
    from .._container import (
        _build,
        _constructor_kwargs,
        _decoded_metadata,
        _kwargs,
        _load_into,
        _model_type,
        _pick_class,
    )
    from .._format.metadata import parse as parse_metadata
    from .._resolve import resolve
    from .._state import optimizer_state_dict
    from .._typed_kwargs import Decoder
    from . import read_index

    index = read_index(location)
    if index.container is None:
        raise UsageError(
            f"{location} is a sharded checkpoint of a plain state dict (it has no container "
            "metadata): load it with torch.distributed.checkpoint.load and "
            "pytorch_saver.distributed.Reader",
            kind="Usage",
        )
    saved = parse_metadata(index.container["metadata"])
    internals = saved.internals
    if internals.model_class is None or saved.model_kwargs is None:
        raise FormatError(f"{INDEX_NAME}: container.metadata names no model class", kind="Schema")
    given = [c for c in (model_class, optim_class, scheduler_class) if isinstance(c, type)]
    decoder = Decoder(allow=allow, classes=[*classes, *given], callables=callables)
    by_name = model_class is None and optim_class is None and scheduler_class is None
    model_cls: object = model_class
    if model_cls is None:
        model_cls = resolve(internals.model_class, "model", allow=allow)
    optim_cls = _pick_class(optim_class, internals.optimizer, "optimizer", by_name, location, allow)
    scheduler_cls = _pick_class(
        scheduler_class, internals.scheduler, "scheduler", by_name, location, allow
    )
    metadata = _decoded_metadata(saved, decoder)
    model_type = _model_type(model_cls)
    if distribute is None:
        mesh = current_mesh()
        distribute = None if mesh is None else fully_shard_on(mesh)
    built = _build(
        model_type,
        _kwargs(metadata["model_kwargs"], "model_kwargs"),
        optim_cls,
        _constructor_kwargs(saved, metadata.get("optim_kwargs")),
        scheduler_cls,
        _constructor_kwargs(saved, metadata.get("scheduler_kwargs")),
        prepare=distribute,
        version=version,
    )
    optim_tensors = None
    if built.optimizer is not None:
        assert internals.optimizer is not None
        optim_tensors = optimizer_templates(index, built.model, internals.optimizer.param_names)
    load_state(location, built.model, optim_tensors, verify=verify)
    if built.optimizer is not None:
        assert internals.optimizer is not None and optim_tensors is not None
        _load_into(
            built.optimizer,
            optimizer_state_dict(built.optimizer, built.model, internals.optimizer, optim_tensors),
            "optimizer",
        )
    if built.scheduler is not None:
        assert internals.scheduler is not None
        _load_into(
            built.scheduler,
            composite_state(built.scheduler, internals.scheduler.state),
            "scheduler",
        )
    return metadata, built
