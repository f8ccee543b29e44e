"""The Python side of the conversion benchmark (benches/convert.rs): makes
the torch.save file and times the Python contenders, one per process.

Each mode prints one JSON line. Times are taken inside this process after
its imports (torch, safetensors, pytorch_saver), so process start and
import time are excluded.

    convert.py make OUT MIB
        a transformer-like state dict of about MIB MiB of float32 tensors
        (an embedding, four blocks of attention and MLP weights with their
        biases and norms, a final norm), written by torch.save
    convert.py safetensors IN OUT
        torch.load(IN, mmap=True, weights_only=True), then
        safetensors.torch.save_file(sd, OUT); the seconds without and with
        an fsync of OUT after it
    convert.py ours IN OUT
        pytorch_saver.convert(IN, OUT)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time


def make(out: str, mib: int) -> None:
    import torch

    # About 64 * d**2 floats: an embedding of 16 * d rows and four blocks
    # of 12 * d**2; d = 2048 for 1 GiB.
    d = max(64, round(64 * math.sqrt(mib) / 64) * 64)
    torch.manual_seed(0)
    sd: dict[str, torch.Tensor] = {"embed.weight": torch.randn(16 * d, d)}
    for i in range(4):
        p = f"layers.{i}."
        for name in ("q", "k", "v", "o"):
            sd[p + f"attn.{name}.weight"] = torch.randn(d, d)
            sd[p + f"attn.{name}.bias"] = torch.randn(d)
        sd[p + "mlp.up.weight"] = torch.randn(4 * d, d)
        sd[p + "mlp.up.bias"] = torch.randn(4 * d)
        sd[p + "mlp.down.weight"] = torch.randn(d, 4 * d)
        sd[p + "mlp.down.bias"] = torch.randn(d)
        for norm in ("norm1", "norm2"):
            sd[p + f"{norm}.weight"] = torch.ones(d)
            sd[p + f"{norm}.bias"] = torch.zeros(d)
    sd["norm.weight"] = torch.ones(d)
    sd["norm.bias"] = torch.zeros(d)
    torch.save(sd, out)
    data = sum(t.numel() * t.element_size() for t in sd.values())
    print(json.dumps({"tensors": len(sd), "bytes": data, "dim": d}))


def safetensors_convert(src: str, out: str) -> None:
    import torch
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    sd = torch.load(src, mmap=True, weights_only=True)
    save_file(sd, out)
    t1 = time.perf_counter()
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    t2 = time.perf_counter()
    print(json.dumps({"seconds": t1 - t0, "seconds_fsync": t2 - t0}))


def ours_convert(src: str, out: str) -> None:
    import pytorch_saver

    t0 = time.perf_counter()
    pytorch_saver.convert(src, out)
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "make":
        make(args[1], int(args[2]))
    elif len(args) == 3 and args[0] == "safetensors":
        safetensors_convert(args[1], args[2])
    elif len(args) == 3 and args[0] == "ours":
        ours_convert(args[1], args[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
