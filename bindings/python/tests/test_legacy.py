"""Files of the original pytorch-saver 0.1 package (a pickle in a zip) read
back with equal tensors and state dicts, and a malicious pickle is refused
before any of it runs: no global outside the allow-list, however it is
smuggled in (directly, through a computed name, inside a tensor's storage
bytes), ever gets called."""

from __future__ import annotations

import ast
import collections
import functools
import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import support
import torch
from pytorch_saver import _legacy
from pytorch_saver._errors import FormatError, UnsafePickleError
from pytorch_saver._format import write_checkpoint
from pytorch_saver._legacy import LegacyCheckpoint, is_legacy, read_legacy

PACKAGE = Path(_legacy.__file__).resolve().parent


# What pytorch-saver 0.1's ModelContainer._save_zip wrote.
save_original = support.write_legacy


def save_payload(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps({"model_kwargs": {}, "timestamp": 1}))
        zf.writestr("state_dicts.pkl", payload)
    return path


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.relu(self.bn(self.fc1(x))))
        return out


def trained(
    scheduler: Callable[[torch.optim.Optimizer], Any],
) -> tuple[Net, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = scheduler(opt)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    return model, opt, sched


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "MultiStepLR": lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [2, 5, 5], gamma=0.1),
}


def assert_equal(got: Any, want: Any, where: str = "") -> None:
    """Equal values of equal types, tensors bit for bit."""
    assert type(got) is type(want) or (
        isinstance(want, torch.Tensor) and type(got) is torch.Tensor
    ), f"{where}: {type(got)} != {type(want)}"
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got.view(torch.uint8) if got.dtype == torch.bool else got, want), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            assert_equal(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_equal(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


# ---------------------------------------------------------------------------
# real files of the original package


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_reads_model_adam_and_scheduler_state(tmp_path: Path, scheduler: str) -> None:
    model, opt, sched = trained(SCHEDULERS[scheduler])
    metadata = {"model_kwargs": {}, "optim_kwargs": {"lr": 0.01}, "loss": 0.5, "timestamp": 7}
    state_dicts = {
        "model_state_dict": model.state_dict(),
        "optim_state_dict": opt.state_dict(),
        "scheduler_state_dict": sched.state_dict(),
    }
    path = save_original(tmp_path / "checkpoint_7.zip", metadata, state_dicts)
    assert is_legacy(path)
    legacy = read_legacy(path)
    assert isinstance(legacy, LegacyCheckpoint)
    assert legacy.metadata == metadata
    assert_equal(legacy.model_state_dict, state_dicts["model_state_dict"], "model")
    assert_equal(legacy.optim_state_dict, state_dicts["optim_state_dict"], "optimizer")
    assert_equal(legacy.scheduler_state_dict, state_dicts["scheduler_state_dict"], "scheduler")
    if scheduler == "MultiStepLR":
        assert legacy.scheduler_state_dict is not None
        assert type(legacy.scheduler_state_dict["milestones"]) is collections.Counter
    # PyTorch's load_state_dict accepts all three, version metadata included.
    assert legacy.model_state_dict._metadata == model.state_dict()._metadata  # type: ignore[attr-defined]
    assert legacy.optim_state_dict is not None and legacy.scheduler_state_dict is not None
    model2 = Net()
    model2.load_state_dict(legacy.model_state_dict)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    opt2.load_state_dict(legacy.optim_state_dict)
    sched2 = SCHEDULERS[scheduler](opt2)
    sched2.load_state_dict(legacy.scheduler_state_dict)
    assert_equal(opt2.state_dict(), opt.state_dict(), "reloaded optimizer")
    assert_equal(sched2.state_dict(), sched.state_dict(), "reloaded scheduler")


def test_reads_an_inference_file(tmp_path: Path) -> None:
    model, _, _ = trained(SCHEDULERS["StepLR"])
    path = save_original(
        tmp_path / "inference_1.zip",
        {"model_kwargs": {}, "timestamp": 1, "loss": float("nan")},
        {"model_state_dict": model.state_dict()},
    )
    legacy = read_legacy(path)
    assert legacy.optim_state_dict is None and legacy.scheduler_state_dict is None
    assert legacy.metadata["timestamp"] == 1  # NaN is what json.dumps wrote by default
    assert_equal(legacy.model_state_dict, model.state_dict())


def test_every_dtype_and_layout(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4) - 5
    state: dict[str, torch.Tensor] = collections.OrderedDict()
    for dtype in support.DTYPES:
        t = base.to(dtype)
        state[f"{dtype}.matrix"] = t
        state[f"{dtype}.scalar"] = t[1, 2].clone()
        state[f"{dtype}.empty"] = torch.empty(0, 3, dtype=dtype)
        state[f"{dtype}.transposed"] = t.t()
        state[f"{dtype}.slice"] = t[1:, 1::2]
    params = {"param": torch.nn.Parameter(torch.ones(2, 2))}  # keep_vars=True state dicts
    path = save_original(
        tmp_path / "x.zip", {"model_kwargs": {}}, {"model_state_dict": {**state, **params}}
    )
    legacy = read_legacy(path)
    for name, t in state.items():
        assert_equal(legacy.model_state_dict[name], t, name)
    assert type(legacy.model_state_dict["param"]) is torch.Tensor
    assert torch.equal(legacy.model_state_dict["param"], torch.ones(2, 2))


def test_is_legacy(tmp_path: Path) -> None:
    meta = {
        "model_kwargs": {},
        "timestamp": 1,
        "__pytorch_saver__": {
            "format_version": 1,
            "kind": "inference",
            "model": {"class": "x.Net"},
            "producer": {"library": "pytorch-saver", "version": "0.1.0", "language": "python"},
        },
    }
    v1 = write_checkpoint(tmp_path, None, meta, {"w": torch.ones(1)}, None)
    assert not is_legacy(v1)
    (tmp_path / "text.zip").write_text("not a zip")
    assert not is_legacy(tmp_path / "text.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("metadata.json", "{}")
    assert not is_legacy(tmp_path / "other.zip")
    with pytest.raises(FileNotFoundError):
        is_legacy(tmp_path / "absent.zip")
    with pytest.raises(FormatError):
        read_legacy(v1)


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ({"metadata.json": "{}"}, "missing member state_dicts.pkl"),
        ({"metadata.json": "[1]", "state_dicts.pkl": pickle.dumps({})}, "not a JSON object"),
        (
            {"metadata.json": '{"a": 1, "a": 2}', "state_dicts.pkl": pickle.dumps({})},
            "duplicate keys",
        ),
        ({"metadata.json": "{}", "state_dicts.pkl": pickle.dumps([1])}, "not a dict"),
        ({"metadata.json": "{}", "state_dicts.pkl": pickle.dumps({})}, "no model_state_dict"),
        (
            {
                "metadata.json": "{}",
                "state_dicts.pkl": pickle.dumps({"model_state_dict": {}, "x": 1}),
            },
            "unexpected key 'x'",
        ),
        (
            {
                "metadata.json": "{}",
                "state_dicts.pkl": pickle.dumps({"model_state_dict": {"a": 1}}),
            },
            "not a dict of names to tensors",
        ),
        ({"metadata.json": "{}", "state_dicts.pkl": b"\x80\x04K"}, "not a valid pickle"),
        (
            {
                "metadata.json": "{}",
                "state_dicts.pkl": pickle.dumps({"model_state_dict": {}}) + b"x",
            },
            "bytes after the pickle",
        ),
        (
            {"metadata.json": "{}", "state_dicts.pkl": b"", "extra.txt": ""},
            "unexpected member 'extra.txt'",
        ),
    ],
    ids=[
        "no-pickle",
        "meta-array",
        "meta-dupes",
        "not-dict",
        "no-model",
        "extra-key",
        "not-tensors",
        "truncated",
        "trailing",
        "extra-member",
    ],
)
def test_malformed_files(tmp_path: Path, members: dict[str, Any], needle: str) -> None:
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(FormatError, match=re.escape(needle)):
        read_legacy(path)


def test_corrupt_deflate_stream(tmp_path: Path) -> None:
    model, _, _ = trained(SCHEDULERS["StepLR"])
    path = save_original(tmp_path / "x.zip", {}, {"model_state_dict": model.state_dict()})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("state_dicts.pkl")
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[middle] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError):
        read_legacy(path)


# ---------------------------------------------------------------------------
# malicious pickles


class Reduce:
    """Pickles as ``fn(*args)`` (with ``state`` applied by BUILD if given)."""

    def __init__(self, fn: Any, *args: Any, state: Any = None) -> None:
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self) -> Any:
        if self.state is None:
            return (self.fn, self.args)
        return (self.fn, self.args, self.state)


def storage_blob(main: bytes, keys: list[str] | None = None) -> bytes:
    """torch's legacy serialization around an arbitrary object pickle."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    return b"".join(
        [
            pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
            pickle.dumps(1001, protocol=2),
            pickle.dumps(sys_info, protocol=2),
            main,
            pickle.dumps(keys or [], protocol=2),
        ]
    )


def tensor_with_storage(blob: bytes, size: tuple[int, ...] = (1,)) -> Reduce:
    """A tensor pickled as torch pickles one, around the given storage bytes."""
    storage = Reduce(torch.storage._load_from_bytes, blob)
    stride = torch.empty(size).stride()
    return Reduce(
        torch._utils._rebuild_tensor_v2, storage, 0, size, stride, False, collections.OrderedDict()
    )


def state_with(value: Any) -> bytes:
    return pickle.dumps({"model_state_dict": collections.OrderedDict(w=value)})


def payloads(canary: Path) -> dict[str, tuple[bytes, str]]:
    touch = f"touch {canary}"
    return {
        "os.system": (state_with(Reduce(os.system, touch)), f"{os.system.__module__}.system"),
        "builtins.eval": (
            state_with(Reduce(eval, f"__import__('os').system({touch!r})")),
            "builtins.eval",
        ),
        "builtins.exec": (
            state_with(Reduce(exec, f"import os; os.system({touch!r})")),
            "builtins.exec",
        ),
        "subprocess.Popen": (
            state_with(Reduce(subprocess.Popen, ["touch", str(canary)])),
            "subprocess.Popen",
        ),
        "functools.partial": (
            state_with(Reduce(functools.partial(os.system, touch))),
            "functools.partial",
        ),
        "in-storage-bytes": (
            state_with(
                tensor_with_storage(storage_blob(pickle.dumps(Reduce(os.system, touch), 2)))
            ),
            f"{os.system.__module__}.system",
        ),
        "in-storage-type": (
            # The storage class slot of the persistent id holds a call.
            state_with(
                tensor_with_storage(
                    storage_blob(
                        b"\x80\x02(X\x07\x00\x00\x00storage"
                        + pickle.dumps(Reduce(os.system, touch), 2)[2:-1]
                        + b"X\x01\x00\x00\x001X\x03\x00\x00\x00cpuK\x01NtQ."
                    )
                )
            ),
            f"{os.system.__module__}.system",
        ),
        "protocol-0": (
            f"cos\nsystem\n(S'{touch}'\ntR.".encode(),
            "os.system",
        ),
        "inst-opcode": (
            f"(S'{touch}'\nios\nsystem\n.".encode(),
            "os.system",
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "builtins.eval",
        "builtins.exec",
        "subprocess.Popen",
        "functools.partial",
        "in-storage-bytes",
        "in-storage-type",
        "protocol-0",
        "inst-opcode",
    ],
)
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, name: str) -> None:
    canary = tmp_path / "canary"
    payload, global_name = payloads(canary)[name]
    path = save_payload(tmp_path / "evil.zip", payload)
    assert is_legacy(path)  # never unpickles
    with pytest.raises(UnsafePickleError, match=re.escape(global_name)):
        read_legacy(path)
    assert not canary.exists()


def test_the_payloads_are_live(tmp_path: Path) -> None:
    """The os.system payload does create the canary when an unrestricted
    unpickler runs it (in a child process), so the test above proves
    something."""
    canary = tmp_path / "canary"
    payload, _ = payloads(canary)["os.system"]
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=payload, check=True, timeout=60)
    assert canary.exists()


def test_computed_global_names_are_refused(tmp_path: Path) -> None:
    canary = tmp_path / "canary"

    # Push "posix", "system", "x", POP, STACK_GLOBAL: the names on the stack
    # are not the last two literals pushed.
    def s(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    payload = (
        b"\x80\x04"
        + s(os.system.__module__)
        + s("system")
        + s("x")
        + b"0\x93"
        + s(f"touch {canary}")
        + b"\x85R."
    )
    path = save_payload(tmp_path / "evil.zip", payload)
    with pytest.raises(UnsafePickleError, match="computed"):
        read_legacy(path)
    assert not canary.exists()


def test_memoized_global_names_are_still_checked(tmp_path: Path) -> None:
    def s(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    # "collections" is memoized and fetched back; "system" is not allowed there.
    payload = b"\x80\x04" + s("collections") + b"\x94" + b"0h\x00" + s("system") + b"\x93)R."
    path = save_payload(tmp_path / "evil.zip", payload)
    with pytest.raises(UnsafePickleError, match=r"collections\.system"):
        read_legacy(path)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"\x80\x02\x82\x01.", "extension-registry"),  # EXT1
        (b"\x80\x02K\x01Q.", "persistent id"),  # BINPERSID in the outer pickle
    ],
    ids=["ext1", "persid"],
)
def test_other_opcodes_that_reach_code_are_refused(
    tmp_path: Path, payload: bytes, needle: str
) -> None:
    path = save_payload(tmp_path / "evil.zip", payload)
    with pytest.raises(UnsafePickleError, match=needle):
        read_legacy(path)


def test_the_unpickler_itself_refuses_globals(tmp_path: Path) -> None:
    """Second line of defence: even without the scan, find_class resolves
    nothing outside the allow-list."""
    canary = tmp_path / "canary"
    payload, _ = payloads(canary)["os.system"]
    loader = _legacy._Loader("x")
    unpickler = _legacy._RestrictedUnpickler(io.BytesIO(payload), loader.outer_globals(), "test")
    with pytest.raises(UnsafePickleError, match="system"):
        unpickler.load()
    assert not canary.exists()
    # Allowed names map to this package's constructors, never to the real
    # objects (torch's functions, the classes a BUILD could alter).
    ordered = unpickler.find_class("collections", "OrderedDict")
    assert ordered is not collections.OrderedDict
    assert type(ordered()) is collections.OrderedDict
    assert unpickler.find_class("torch._utils", "_rebuild_tensor_v2") is not (
        torch._utils._rebuild_tensor_v2
    )
    with pytest.raises(UnsafePickleError):
        unpickler.find_class("torch", "load")


def test_a_tensor_modified_by_build_is_refused(tmp_path: Path) -> None:
    fn, args = torch.ones(2).__reduce_ex__(2)  # type: ignore[no-untyped-call]
    tensor = Reduce(fn, *args, state=(True, None, collections.OrderedDict()))
    path = save_payload(tmp_path / "x.zip", state_with(tensor))
    with pytest.raises(FormatError, match="modified"):
        read_legacy(path)


def test_state_applied_to_an_allowed_class_is_refused(tmp_path: Path) -> None:
    # BUILD on the Counter class itself: setattr(Counter, "update", ...)
    # would change Counter for the whole process.
    payload = b"\x80\x02ccollections\nCounter\nq\x00N}q\x01X\x06\x00\x00\x00updateq\x02h\x00s\x86b."
    path = save_payload(tmp_path / "x.zip", payload)
    before = dict(vars(collections.Counter))
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        read_legacy(path)
    assert dict(vars(collections.Counter)) == before
    assert collections.Counter("aab")["a"] == 2


def test_state_applied_to_a_storage_is_refused(tmp_path: Path) -> None:
    storage = torch.ones(2)._typed_storage()  # type: ignore[no-untyped-call]
    fn, args = storage.__reduce__()
    fake = Reduce(fn, *args, state={"x": 1})
    tensor = Reduce(torch._utils._rebuild_tensor_v2, fake, 0, (2,), (1,), False, {})
    path = save_payload(tmp_path / "x.zip", state_with(tensor))
    with pytest.raises(UnsafePickleError, match="state of a storage"):
        read_legacy(path)


# ---------------------------------------------------------------------------
# sizes come from checked lengths only


def test_a_huge_stated_length_allocates_nothing(tmp_path: Path) -> None:
    # BINBYTES8 claiming 2**60 bytes, with 3 present.
    payload = b"\x80\x04\x8e" + (2**60).to_bytes(8, "little") + b"abc."
    path = save_payload(tmp_path / "x.zip", payload)
    with pytest.raises(FormatError, match="not a valid pickle"):
        read_legacy(path)


def test_memo_indices_out_of_sequence_are_refused(tmp_path: Path) -> None:
    # LONG_BINPUT 2**31 - 1: the unpickler would size its memo by it.
    payload = b"\x80\x02Nr" + (2**31 - 1).to_bytes(4, "little") + b"."
    path = save_payload(tmp_path / "x.zip", payload)
    with pytest.raises(FormatError, match="memo index 2147483647 out of sequence"):
        read_legacy(path)


def test_storage_bytes_are_scanned_again_when_loaded(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    blob = storage_blob(pickle.dumps(Reduce(os.system, f"touch {canary}"), 2))
    loader = _legacy._Loader("x")
    with pytest.raises(UnsafePickleError, match="system"):
        loader.load_from_bytes(blob)
    assert not canary.exists()


def _storage_main(numel: int, storage_type: str = "FloatStorage") -> bytes:
    return (
        b"\x80\x02(X\x07\x00\x00\x00storagectorch\n"
        + storage_type.encode()
        + b"\nX\x01\x00\x00\x001X\x03\x00\x00\x00cpu\x8a\x08"
        + numel.to_bytes(8, "little")
        + b"NtQ."
    )


def test_a_huge_storage_element_count_allocates_nothing(tmp_path: Path) -> None:
    blob = storage_blob(_storage_main(2**61), ["1"]) + (2**61).to_bytes(8, "little") + b"\0" * 8
    path = save_payload(tmp_path / "x.zip", state_with(tensor_with_storage(blob)))
    with pytest.raises(FormatError, match="elements"):
        read_legacy(path)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    blob = storage_blob(_storage_main(2), ["1"]) + (2).to_bytes(8, "little") + b"\0" * 8
    path = save_payload(tmp_path / "x.zip", state_with(tensor_with_storage(blob, (3,))))
    with pytest.raises(FormatError, match="reads element 2 of a storage of 2"):
        read_legacy(path)
    ok = save_payload(tmp_path / "ok.zip", state_with(tensor_with_storage(blob, (2,))))
    assert torch.equal(read_legacy(ok).model_state_dict["w"], torch.zeros(2))


def test_expanded_tensors_are_refused(tmp_path: Path) -> None:
    path = save_original(
        tmp_path / "x.zip", {}, {"model_state_dict": {"w": torch.ones(1).expand(10**6)}}
    )
    with pytest.raises(FormatError, match="expanded"):
        read_legacy(path)


def test_unknown_storage_class_is_refused(tmp_path: Path) -> None:
    blob = storage_blob(_storage_main(1, "ComplexFloatStorage"), ["1"])
    path = save_payload(tmp_path / "x.zip", state_with(tensor_with_storage(blob)))
    with pytest.raises(UnsafePickleError, match="torch.ComplexFloatStorage"):
        read_legacy(path)


# ---------------------------------------------------------------------------
# no other way to unpickle


def _unpickling_uses(tree: ast.AST) -> list[str]:
    """Every place a module's code (not its comments) reaches for a way to
    unpickle: pickle.load(s), torch.load, an Unpickler, modules that
    unpickle."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            dotted = f"{node.value.id}.{node.attr}"
            if dotted in ("pickle.load", "pickle.loads", "torch.load", "pickle.Unpickler"):
                uses.append(dotted)
        elif isinstance(node, ast.Attribute) and node.attr in ("serialization", "_Unpickler"):
            uses.append(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            module = getattr(node, "module", None) or ""
            for name in [module, *names]:
                if name.split(".")[0] in ("_pickle", "dill", "joblib", "marshal", "shelve") or (
                    module in ("pickle", "torch") and name in ("load", "loads", "Unpickler")
                ):
                    uses.append(name)
    return uses


def test_no_pickle_load_anywhere_else_in_the_package() -> None:
    """Only _legacy.py unpickles, and only through its restricted unpickler:
    the one use of pickle.Unpickler is as its base class."""
    sources = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "_legacy.py" in sources
    for source in sources:
        tree = ast.parse(source.read_text())
        uses = _unpickling_uses(tree)
        if source.name == "_legacy.py":
            assert uses == ["pickle.Unpickler"], uses
            bases = [
                ast.unparse(base)
                for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef)
                for base in node.bases
            ]
            assert "pickle.Unpickler" in bases
        else:
            assert uses == [], f"{source.name}: {uses}"
