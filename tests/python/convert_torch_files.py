"""The Python half of tests/convert_torch.rs: writes real torch.save files
(and files of the original pytorch-saver 0.1 package) with torch 2.13, and
beside each the tensors it holds, written by safetensors.torch.save_file,
so that the Rust reader's bytes can be compared with what torch saw.

Input (stdin, JSON): {"dir": DIR}.
Output (stdout, JSON): for each case, its files and what the Rust side
must find (tensor names in order, optimizer and scheduler state as JSON,
user values, the global a hostile pickle names)."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import pickletools
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import save_file


def expected_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Writes `tensors` (made contiguous, each its own copy) as a
    safetensors file; returns their names in order."""
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(path))
    return list(tensors)


def plain(value: Any) -> Any:
    """A state dict value as FORMAT.md sections 5 and 6 hold it as JSON."""
    if isinstance(value, collections.Counter):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.relu(self.bn(self.fc1(x))))
        return out


def trained(named: bool, scheduler: str) -> tuple[Net, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = Net()
    params = model.named_parameters() if named else model.parameters()
    opt = torch.optim.Adam(params, lr=0.01)
    if scheduler == "StepLR":
        sched: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2, 5, 5], gamma=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def optimizer_expectation(root: Path, name: str, opt: torch.optim.Optimizer) -> dict[str, Any]:
    sd = opt.state_dict()
    tensors = {
        f"state.{i}.{k}": v
        for i, s in sd["state"].items()
        for k, v in s.items()
        if torch.is_tensor(v)
    }
    expected_tensors(root / f"{name}.optimizer.safetensors", tensors)
    groups = [plain({k: v for k, v in g.items() if k != "param_names"}) for g in sd["param_groups"]]
    names = None
    if all("param_names" in g for g in sd["param_groups"]):
        names = [n for g in sd["param_groups"] for n in g["param_names"]]
    return {
        "param_groups": groups,
        "param_names": names,
        "state_keys": {str(i): sorted(s) for i, s in sd["state"].items()},
        "tensors": str(root / f"{name}.optimizer.safetensors"),
    }


def training_dicts(root: Path, out: dict[str, Any]) -> None:
    for name, named, scheduler in (
        ("train_steplr", False, "StepLR"),
        ("train_named", True, "MultiStepLR"),
    ):
        model, opt, sched = trained(named, scheduler)
        path = root / f"{name}.pt"
        torch.save(
            {
                "epoch": 3,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "loss": 0.25,
                "note": "three steps",
                "history": [1.5, 0.75],
            },
            path,
        )
        out[name] = {
            "file": str(path),
            "model": expected_tensors(root / f"{name}.model.safetensors", model.state_dict()),
            "expected": str(root / f"{name}.model.safetensors"),
            "optimizer": optimizer_expectation(root, name, opt),
            "scheduler": plain(sched.state_dict()),
            "user": {"epoch": 3, "loss": 0.25, "note": "three steps", "history": [1.5, 0.75]},
        }


def layouts() -> dict[str, torch.Tensor]:
    """Views, shared storages, empty tensors and every dtype of the format."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "base": base,
        "transposed": base.t(),
        "row": base[2],
        "column": base[:, 3],
        "strided": base[::2, 1::2],
        "shared": base.view(6, 4),
        "empty": torch.empty(0, 5),
        "empty_view": base[4:],
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "f64": torch.linspace(-1, 1, 7, dtype=torch.float64),
        "f16": torch.tensor([1.0, -2.5, 65504.0], dtype=torch.float16),
        "bf16": torch.tensor([[1.0, -2.5], [3.0e38, 1e-3]], dtype=torch.bfloat16).t(),
        "bool": torch.tensor([True, False, True, True]),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "i16": torch.tensor([-32768, 7, 32767], dtype=torch.int16),
        "i32": torch.arange(-3, 3, dtype=torch.int32).reshape(2, 3).t(),
        "i64": torch.tensor([-(2**62), 2**62 + 5], dtype=torch.int64),
    }


def legacy_file(root: Path, out: dict[str, Any]) -> None:
    """A file as pytorch-saver 0.1's ModelContainer wrote it: a deflated zip
    of metadata.json and pickle.dumps of the state dicts."""
    model, opt, sched = trained(False, "MultiStepLR")
    metadata = {
        "model_kwargs": {},
        "optim_kwargs": {"lr": 0.01},
        "scheduler_kwargs": {"milestones": [2, 5, 5], "gamma": 0.1},
        "loss": 0.5,
        "epoch": 2,
        "timestamp": 7,
    }
    state = model.state_dict()
    # A view and a shared storage as well, as pickle.dumps writes them.
    views = dict(state)
    views["fc1.weight_t"] = state["fc1.weight"].t()
    state_dicts = {
        "model_state_dict": views,
        "optim_state_dict": opt.state_dict(),
        "scheduler_state_dict": sched.state_dict(),
    }
    path = root / "checkpoint_7.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps(metadata, indent=2))
        zf.writestr("state_dicts.pkl", pickle.dumps(state_dicts))
    out["legacy"] = {
        "file": str(path),
        "model": expected_tensors(root / "legacy.model.safetensors", views),
        "expected": str(root / "legacy.model.safetensors"),
        "optimizer": optimizer_expectation(root, "legacy", opt),
        "scheduler": plain(sched.state_dict()),
        "user": {"loss": 0.5, "epoch": 2},
    }


class Call:
    """Pickles as a call of `fn(*args)`: what a malicious file holds."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.fn, self.args)


def qualified(fn: Any) -> str:
    module = pickle.whichmodule(fn, fn.__name__)
    return f"{module}.{fn.__qualname__}"


ALLOWED = {
    "collections OrderedDict",
    "torch._utils _rebuild_tensor_v2",
    "torch FloatStorage",
}


def named_global(path: Path) -> str:
    """The global a torch.save file's pickle names beyond what state dicts
    use, as the pickle spells it (protocol 2 writes builtins as
    __builtin__)."""
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL" and arg not in ALLOWED:
            return str(arg).replace(" ", ".")
    raise AssertionError(f"{path}: no payload")


def hostile(root: Path, out: dict[str, Any]) -> None:
    canary = root / "CANARY"
    cases: dict[str, Any] = {}
    for name, fn, args in (
        ("system", os.system, (f"touch {canary}",)),
        ("eval", eval, (f"open({str(canary)!r}, 'w')",)),
        ("torch_load", torch.load, (str(root / "train_steplr.pt"),)),
    ):
        path = root / f"hostile_{name}.pt"
        torch.save({"weight": torch.ones(2), "payload": Call(fn, *args)}, path)
        cases[name] = {"file": str(path), "global": named_global(path)}

    # The same payload inside a 0.1 file's storage bytes: torch's legacy
    # format whose object pickle is the call.
    blob = io.BytesIO()
    for part in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(part, blob, protocol=2)
    pickle.dump(Call(os.system, f"touch {canary}"), blob, protocol=2)
    pickle.dump([], blob, protocol=2)
    path = root / "hostile_legacy.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps({"model_kwargs": {}, "timestamp": 1}))
        zf.writestr(
            "state_dicts.pkl",
            pickle.dumps(
                {"model_state_dict": {"w": Call(torch.storage._load_from_bytes, blob.getvalue())}}
            ),
        )
    cases["legacy_storage_bytes"] = {"file": str(path), "global": qualified(os.system)}
    out["hostile"] = cases
    out["canary"] = str(canary)

    complex_path = root / "complex.pt"
    torch.save({"ok": torch.ones(2), "z": torch.zeros(3, dtype=torch.complex64)}, complex_path)
    out["complex"] = str(complex_path)
    expanded = root / "expanded.pt"
    torch.save({"e": torch.ones(1).expand(1000)}, expanded)
    out["expanded"] = str(expanded)


def main() -> None:
    spec = json.load(sys.stdin)
    root = Path(spec["dir"])
    out: dict[str, Any] = {}

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().state_dict()
    torch.save(resnet, root / "resnet18.pt")
    out["resnet18"] = {
        "file": str(root / "resnet18.pt"),
        "model": expected_tensors(root / "resnet18.safetensors", resnet),
        "expected": str(root / "resnet18.safetensors"),
    }

    training_dicts(root, out)

    tensors = layouts()
    torch.save(tensors, root / "layouts.pt")
    torch.save(tensors, root / "layouts_legacy_format.pt", _use_new_zipfile_serialization=False)
    out["layouts"] = {
        "file": str(root / "layouts.pt"),
        "legacy_format": str(root / "layouts_legacy_format.pt"),
        "model": expected_tensors(root / "layouts.safetensors", tensors),
        "expected": str(root / "layouts.safetensors"),
    }

    legacy_file(root, out)
    hostile(root, out)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
