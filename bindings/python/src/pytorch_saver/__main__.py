"""The command line: ``python -m pytorch_saver``.

``upgrade OLD DIR --model mypkg.Net [--optimizer torch.optim.Adam]
[--scheduler torch.optim.lr_scheduler.StepLR] [--prefix P]`` converts a file
of the original package (0.1.x) into format v1 in DIR and prints the new
path. The modules of the classes named on the command line may be imported
(the current directory is searched first, as ``python -m`` does).

``convert IN OUT [--to pytorch-saver|safetensors|hf] [--model CLASS
--model-kwargs JSON] [--optimizer CLASS --optim-kwargs JSON] [--scheduler
CLASS --scheduler-kwargs JSON] [--inference] [--max-shard-size BYTES]``
converts a ``torch.save`` file, a safetensors file, a Hugging Face directory,
a 0.1.x file or a file of this format (``pytorch_saver.convert``) and prints
OUT. The kwargs are JSON objects whose values may be format v2 typed values
(``{"block": {"__type__": "class", "name": "mypkg.Block"}}``); the modules of
the classes named on the command line, there included, may be imported.

``inspect FILE`` prints the file's metadata as JSON, then each tensor's
name, dtype and shape.

Exit status: 0 on success, 1 with a one-line message on a pytorch-saver error
or an unreadable file, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._container import upgrade
from ._convert import TARGETS, convert
from ._errors import FormatError, InvalidArgumentError, PytorchSaverError
from ._format import read_checkpoint
from ._format.typed import TYPE_KEY
from ._legacy import is_legacy
from ._resolve import Kind, resolve
from ._storage import parse as parse_location
from ._typed_kwargs import Decoder

__all__ = ["main"]


def _named_class(name: str | None, kind: Kind) -> Any:
    """The class the user named on the command line; naming it allows its
    module (and the packages above it) to be imported."""
    if name is None:
        return None
    parts = name.split(".")
    allow = [".".join(parts[:i]) for i in range(1, len(parts))]
    return resolve(name, kind, allow=allow)


def _search_cwd() -> None:
    """Lets the classes named on the command line come from the current
    directory, as ``python -m`` does."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def _upgrade(args: argparse.Namespace) -> int:
    _search_cwd()
    path = upgrade(
        args.old,
        args.directory,
        _named_class(args.model, "model"),
        _named_class(args.optimizer, "optimizer"),
        _named_class(args.scheduler, "scheduler"),
        prefix=args.prefix,
    )
    print(path)
    return 0


def _class_names(value: Any) -> list[str]:
    """The class names a typed value's tags hold (``class`` and ``spec``
    tags, an ``object`` tag's ``class``)."""
    if isinstance(value, list):
        return [n for v in value for n in _class_names(v)]
    if not isinstance(value, dict):
        return []
    names = [n for v in value.values() for n in _class_names(v)]
    tag = value.get(TYPE_KEY)
    for key in ("name",) if tag == "class" else ("class",) if tag in ("object", "spec") else ():
        if isinstance(value.get(key), str):
            names.append(value[key])
    return names


def _modules_of(names: list[str]) -> list[str]:
    return [".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)]


def _kwargs_json(text: str | None, option: str) -> Any:
    """``--model-kwargs`` and the like: a JSON object of typed values,
    decoded; the modules of the classes it names may be imported."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{option}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{option}: not a JSON object")
    return Decoder(allow=_modules_of(_class_names(value))).kwargs(value, option)


def _convert(args: argparse.Namespace) -> int:
    _search_cwd()
    named = [n for n in (args.model, args.optimizer, args.scheduler) if n is not None]
    path = convert(
        args.input,
        args.output,
        to=args.to,
        model_class=_named_class(args.model, "model"),
        model_kwargs=_kwargs_json(args.model_kwargs, "--model-kwargs"),
        optim_class=_named_class(args.optimizer, "optimizer"),
        optim_kwargs=_kwargs_json(args.optim_kwargs, "--optim-kwargs"),
        scheduler_class=_named_class(args.scheduler, "scheduler"),
        scheduler_kwargs=_kwargs_json(args.scheduler_kwargs, "--scheduler-kwargs"),
        inference=args.inference,
        max_shard_size=args.max_shard_size,
        allow=_modules_of(named),
    )
    print(path)
    return 0


def _tensor_lines(member: str, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    lines = [f"{member} ({len(tensors)} tensors)"]
    width = max((len(name) for name in tensors), default=0)
    for name, tensor in tensors.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        lines.append(f"  {name:<{width}}  {dtype:<8}  {list(tensor.shape)}")
    return lines


def _inspect(args: argparse.Namespace) -> int:
    try:
        checkpoint = read_checkpoint(args.file)
    except FormatError as exc:
        # Only a local file can be one of the original package.
        if isinstance(parse_location(args.file), str) and is_legacy(args.file):
            raise FormatError(
                f"{args.file} is a file of the original pytorch-saver (0.1): convert it with "
                "`python -m pytorch_saver upgrade`",
                kind=exc.kind,
            ) from exc
        raise
    lines = [json.dumps(checkpoint.metadata, indent=2)]
    lines += _tensor_lines("model.safetensors", checkpoint.model)
    if checkpoint.optimizer:
        lines += _tensor_lines("optimizer.safetensors", checkpoint.optimizer)
    print("\n".join(lines))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytorch_saver",
        description="Inspect pytorch-saver checkpoints and convert files of the original format.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "upgrade",
        help="convert a file of pytorch-saver 0.1 (pickle) into format v1",
        description="Convert a file of pytorch-saver 0.1 into format v1. The state is loaded "
        "into objects built from the named classes, by position as the original did.",
    )
    up.add_argument("old", metavar="OLD", help="the file of the original format")
    up.add_argument("directory", metavar="DIR", help="the directory to write the new file into")
    up.add_argument("--model", required=True, metavar="CLASS", help="the model class: mypkg.Net")
    up.add_argument("--optimizer", metavar="CLASS", help="the optimizer class: torch.optim.Adam")
    up.add_argument(
        "--scheduler", metavar="CLASS", help="the scheduler class: torch.optim.lr_scheduler.StepLR"
    )
    up.add_argument("--prefix", help="the new file's name prefix")
    up.set_defaults(run=_upgrade)

    conv = commands.add_parser(
        "convert",
        help="convert torch.save, safetensors, Hugging Face and 0.1 files",
        description="Convert IN (a torch.save file, a safetensors file, a Hugging Face "
        "directory, a pytorch-saver 0.1 file or a pytorch-saver file, detected by content) "
        "into OUT, which must not exist. The torch.save pickle is read without running it.",
    )
    conv.add_argument("input", metavar="IN", help="the file or directory to convert")
    conv.add_argument(
        "output",
        metavar="OUT",
        help="the file to create (.zip for pytorch-saver), or the directory for --to hf",
    )
    conv.add_argument("--to", choices=TARGETS, default="pytorch-saver", help="the output format")
    conv.add_argument("--model", metavar="CLASS", help="the model class: mypkg.Net")
    conv.add_argument("--model-kwargs", metavar="JSON", help="the model's kwargs (JSON object)")
    conv.add_argument("--optimizer", metavar="CLASS", help="the optimizer class")
    conv.add_argument("--optim-kwargs", metavar="JSON", help="the optimizer's kwargs")
    conv.add_argument("--scheduler", metavar="CLASS", help="the scheduler class")
    conv.add_argument("--scheduler-kwargs", metavar="JSON", help="the scheduler's kwargs")
    conv.add_argument(
        "--inference", action="store_true", help="write the model alone (an inference file)"
    )
    conv.add_argument(
        "--max-shard-size",
        type=int,
        metavar="BYTES",
        help="largest shard of a Hugging Face output (--to hf)",
    )
    conv.set_defaults(run=_convert)

    insp = commands.add_parser(
        "inspect",
        help="print a checkpoint's metadata and tensors",
        description="Print a checkpoint's metadata as JSON, then its tensors.",
    )
    insp.add_argument("file", metavar="FILE")
    insp.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("upgrade", "convert") and args.scheduler and not args.optimizer:
        parser.error("--scheduler needs --optimizer: a scheduler drives an optimizer")
    try:
        status: int = args.run(args)
    except (PytorchSaverError, OSError) as exc:
        message = " ".join(str(exc).split())
        print(f"pytorch-saver: error: {message}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
