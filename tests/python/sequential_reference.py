"""The Python package's side of tests/sequential.rs: PyTorch is the reference
for the portable Sequential.

stdin JSON: {"refusals": [layer list, ...]} -> stdout: each list's
LayerSpecError message (null if it builds); or
stdin JSON: {"nets": {name: {"layers": [...], "train_forward": bool}},
             "data": safetensors path with "<name>.x" and "<name>.y",
             "out": dir}
For each net: builds pytorch_saver.models.Sequential(layers) (seeded), trains
3 steps of SGD with momentum on MSE in train mode, saves the checkpoint
with ModelContainer, then records the eval-mode output on x and, when
"train_forward", the train-mode output on x and the state dict after it
(BatchNorm statistics move). stdout: {name: checkpoint path}; the
outputs and states go to "<out>/<name>.expected.safetensors".
"""

import json
import sys

import torch
from pytorch_saver import LayerSpecError, ModelContainer
from pytorch_saver.models import Sequential
from safetensors.torch import load_file, save_file


def refusals(lists: list[object]) -> list[str | None]:
    """Each layer list's LayerSpecError message, or None if it builds."""
    messages: list[str | None] = []
    for layers in lists:
        try:
            Sequential(layers)  # type: ignore[arg-type]
            messages.append(None)
        except LayerSpecError as exc:
            messages.append(str(exc))
    return messages


def main() -> None:
    args = json.load(sys.stdin)
    if "refusals" in args:
        json.dump(refusals(args["refusals"]), sys.stdout)
        return
    data = load_file(args["data"])
    torch.set_num_threads(1)
    written = {}
    for i, (name, net) in enumerate(sorted(args["nets"].items())):
        torch.manual_seed(1000 + i)
        x, y = data[f"{name}.x"], data[f"{name}.y"]
        container = ModelContainer()
        objs = container.initialize(
            Sequential, {"layers": net["layers"]}, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}
        )
        for _ in range(3):
            objs.optimizer.zero_grad()
            loss = (objs.model(x) - y).square().mean()
            loss.backward()
            objs.optimizer.step()
        written[name] = str(container.save(args["out"], f"seq_{name}"))

        expected = {}
        with torch.no_grad():
            expected["eval"] = objs.model.eval()(x)
            if net["train_forward"]:
                expected["train"] = objs.model.train()(x)
                for key, t in objs.model.state_dict().items():
                    expected[f"state.{key}"] = t
        save_file(
            {k: v.contiguous() for k, v in expected.items()},
            f"{args['out']}/{name}.expected.safetensors",
        )
    json.dump(written, sys.stdout)


if __name__ == "__main__":
    main()
