"""The demo's first act: train a portable conv net in Python and save it.

    .venv/bin/python examples/python/train.py OUT_DIR

The task: 8x8 images holding one line, horizontal (class 0), vertical
(class 1) or diagonal (class 2), plus noise (examples/resume.rs makes the
same images in Rust). The model is ``pytorch_saver.models.Sequential``, an
ordinary ``torch.nn.Sequential`` described by JSON, so Rust, C++ and Go
rebuild it from the file alone. Writes ``OUT_DIR/stripes_checkpoint_<ts>.zip``
with the model's outputs on four probe images in its metadata, and
``OUT_DIR/probe.json`` (the probe as the Go server's request). Prints the
checkpoint's path last.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from pytorch_saver import ModelContainer
from pytorch_saver.models import Sequential

CLASSES = ["horizontal", "vertical", "diagonal"]

LAYERS = [
    {
        "type": "Conv2d",
        "in_channels": 1,
        "out_channels": 8,
        "kernel_size": 3,
        "padding": 1,
        "bias": False,
    },
    {"type": "BatchNorm2d", "num_features": 8},
    {"type": "ReLU"},
    {"type": "MaxPool2d", "kernel_size": 2},
    {"type": "Flatten"},
    {"type": "Linear", "in_features": 128, "out_features": 3},
]


def line_image(label: int, position: int) -> torch.Tensor:
    """A clean 8x8 image of class ``label`` with its line at ``position``."""
    image = torch.zeros(8, 8)
    if label == 0:
        image[position, :] = 1.0
    elif label == 1:
        image[:, position] = 1.0
    else:
        for i in range(8):
            image[i, (i + position) % 8] = 1.0
    return image


def batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 3, (n,), generator=generator)
    positions = torch.randint(0, 8, (n,), generator=generator)
    images = torch.stack(
        [line_image(int(c), int(p)) for c, p in zip(labels, positions, strict=True)]
    )
    images += 0.3 * torch.randn(images.shape, generator=generator)
    return images.unsqueeze(1), labels


def probe() -> torch.Tensor:
    """Four fixed images: one clean line of each class, and a faint, noisy
    vertical one."""
    faint = 0.5 * line_image(1, 6) + 0.2 * torch.randn(
        8, 8, generator=torch.Generator().manual_seed(7)
    )
    return torch.stack([line_image(0, 2), line_image(1, 5), line_image(2, 3), faint]).unsqueeze(1)


def show(title: str, outputs: torch.Tensor) -> None:
    print(title)
    for row in outputs:
        values = " ".join(f"{v:+.6f}" for v in row.tolist())
        print(f"  [{values}] -> {CLASSES[int(row.argmax())]}")


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    container = ModelContainer()
    objs = container.initialize(
        Sequential,
        {"layers": LAYERS},
        torch.optim.Adam,
        {"lr": 0.01},
        torch.optim.lr_scheduler.CosineAnnealingLR,
        {"T_max": 200},
    )
    for _ in range(60):
        x, y = batch(32, generator)
        objs.optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(objs.model(x), y)
        loss.backward()
        objs.optimizer.step()
        objs.scheduler.step()
    x, y = batch(256, generator)
    objs.model.eval()
    with torch.no_grad():
        accuracy = float((objs.model(x).argmax(1) == y).float().mean())
        outputs = objs.model(probe())
    print(f"Python: trained 60 steps of Adam, loss {loss.item():.4f}, accuracy {accuracy:.3f}")
    show("Python: outputs on the probe", outputs)

    path = container.save(
        out,
        "stripes",
        step=60,
        accuracy=accuracy,
        probe_outputs=outputs.reshape(-1).tolist(),
    )
    request = {"inputs": probe().reshape(4, -1).tolist()}
    (out / "probe.json").write_text(json.dumps(request))
    print(path)


if __name__ == "__main__":
    main()
