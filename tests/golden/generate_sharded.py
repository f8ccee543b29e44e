"""Writes the golden sharded checkpoints (docs/FORMAT.md 13, index
version 1) into tests/golden/sharded_v1/, each with a sidecar
`<directory>.json` holding what a reader must find in it. It only ever
adds: a checkpoint whose name prefix exists is kept as it is.

    .venv/bin/python tests/golden/generate_sharded.py

`python_fsdp_mlp_adam_checkpoint_{ts}/`: two ranks (gloo on loopback)
train the built-in MLP (4 -> 8 -> 3, two layers), sharded by FSDP2's
``fully_shard``, with Adam and StepLR for 3 steps, and save it through
``ModelContainer.save``. The sidecar holds:

- `index`: the path of the index, relative to this directory;
- `tensors`: every tensor of the index, whole: `dtype`, `shape` and bytes
  as `hex`;
- `forward`: an input, its shape, and the sharded model's output in eval
  mode (readers compare within 1e-6 relative).
"""

from __future__ import annotations

import datetime
import json
import socket
import subprocess
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).resolve().parent / "sharded_v1"
PREFIX = "python_fsdp_mlp_adam"
WORLD = 2
KWARGS = {"in_dim": 4, "hidden_dim": 8, "n_classes": 3, "n_layers": 2}
DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def _rank(rank: int, port: int) -> None:
    import torch.distributed as dist
    from pytorch_saver import ModelContainer
    from pytorch_saver.models import MLP
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    mesh = init_device_mesh("cpu", (WORLD,))
    torch.manual_seed(11)
    container = ModelContainer()
    objs = container.initialize(
        MLP,
        KWARGS,
        torch.optim.Adam,
        {"lr": 0.01},
        torch.optim.lr_scheduler.StepLR,
        {"step_size": 2, "gamma": 0.5},
        distribute=lambda m: fully_shard(m, mesh=mesh),
    )
    assert objs.optimizer is not None and objs.scheduler is not None
    g = torch.Generator().manual_seed(12)
    for _ in range(3):
        x, y = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
        objs.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(objs.model(x), y).backward()
        objs.optimizer.step()
        objs.scheduler.step()
    index = container.save(str(GOLDEN), PREFIX, note="golden")

    def whole(t: torch.Tensor) -> torch.Tensor:
        return (t.full_tensor() if isinstance(t, DTensor) else t).detach().contiguous()

    tensors = {f"model.{k}": whole(v) for k, v in objs.model.state_dict().items()}
    params = [p for group in objs.optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        for key, value in objs.optimizer.state[p].items():
            tensors[f"optimizer.state.{i}.{key}"] = whole(value)
    probe = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 5
    objs.model.eval()
    with torch.no_grad():
        output = objs.model(probe)
    if rank == 0:
        sidecar = {
            "index": str(Path(index).relative_to(GOLDEN.parent)),
            "tensors": {
                name: {
                    "dtype": DTYPES[t.dtype],
                    "shape": list(t.shape),
                    "hex": t.numpy().tobytes().hex(),
                }
                for name, t in sorted(tensors.items())
            },
            "forward": {
                "input": probe.flatten().tolist(),
                "shape": list(probe.shape),
                "output": output.flatten().tolist(),
            },
        }
        Path(index).parent.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    dist.destroy_process_group()


def main() -> int:
    if len(sys.argv) == 3:
        _rank(int(sys.argv[1]), int(sys.argv[2]))
        return 0
    GOLDEN.mkdir(exist_ok=True)
    if any(p.name.startswith(PREFIX) for p in GOLDEN.iterdir()):
        print(f"{PREFIX}_* exists: kept as it is")
        return 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [subprocess.Popen([sys.executable, __file__, str(r), str(port)]) for r in range(WORLD)]
    return max(p.wait() for p in ranks)


if __name__ == "__main__":
    sys.exit(main())
