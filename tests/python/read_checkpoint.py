"""An independent reader for the interop tests: Python's zipfile and the
safetensors package (no pytorch-saver code) read a checkpoint written by
the Rust core and print what they found as JSON on stdout."""

import json
import struct
import sys
import zipfile

import torch
from safetensors.torch import load as load_safetensors


def data_offset(raw: bytes, info: zipfile.ZipInfo) -> int:
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    return info.header_offset + 30 + name_len + extra_len


def describe(tensor: torch.Tensor) -> dict:
    flat = tensor.contiguous().reshape(-1)
    return {
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
        "hex": flat.view(torch.uint8).numpy().tobytes().hex(),
    }


def main(path: str) -> None:
    with open(path, "rb") as f:
        raw = f.read()
    with zipfile.ZipFile(path) as zf:
        corrupt = zf.testzip()  # reads every member and checks its CRC-32
        infos = zf.infolist()
        out = {
            "corrupt_member": corrupt,
            "members": [i.filename for i in infos],
            "methods": [i.compress_type for i in infos],
            "data_offsets": [data_offset(raw, i) for i in infos],
            "metadata": json.loads(zf.read("metadata.json")),
            "model": {
                k: describe(v) for k, v in load_safetensors(zf.read("model.safetensors")).items()
            },
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
