"""Loads a consolidated sharded checkpoint with the Python package and runs
the model: reads {"path": ..., "input": [[...]]} on stdin, prints
{"output": [[...]], "kind": ..., "step": ...}."""

from __future__ import annotations

import json
import sys

import pytorch_saver
import torch


def main() -> None:
    spec = json.load(sys.stdin)
    metadata, objs = pytorch_saver.ModelContainer().load(spec["path"])
    with torch.no_grad():
        output = objs.model(torch.tensor(spec["input"], dtype=torch.float32))
    json.dump({"output": output.tolist(), "step": metadata.get("step")}, sys.stdout)


if __name__ == "__main__":
    main()
