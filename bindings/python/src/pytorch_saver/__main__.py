"""The command line: ``python -m pytorch_saver``.

``upgrade OLD DIR --model mypkg.Net [--optimizer torch.optim.Adam]
[--scheduler torch.optim.lr_scheduler.StepLR] [--prefix P]`` converts a file
of the original package (0.1.x) into format v1 in DIR and prints the new
path. The modules of the classes named on the command line may be imported
(the current directory is searched first, as ``python -m`` does).

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
from ._errors import FormatError, PytorchSaverError
from ._format import read_checkpoint
from ._legacy import is_legacy
from ._resolve import Kind, resolve

__all__ = ["main"]


def _named_class(name: str | None, kind: Kind) -> Any:
    """The class the user named on the command line; naming it allows its
    module (and the packages above it) to be imported."""
    if name is None:
        return None
    parts = name.split(".")
    allow = [".".join(parts[:i]) for i in range(1, len(parts))]
    return resolve(name, kind, allow=allow)


def _upgrade(args: argparse.Namespace) -> int:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
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
        if is_legacy(args.file):
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
    if args.command == "upgrade" and args.scheduler and not args.optimizer:
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
