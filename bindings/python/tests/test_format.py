"""Format v1 in Python: files round-trip every dtype, the Rust core accepts
what Python writes and Python reads what Rust wrote, the reader refuses
every kind of malformed file with an error that names the problem, and the
writer never replaces a file nor leaves one behind when it fails."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import support
import torch
from pytorch_saver import _format
from pytorch_saver._errors import FormatError, MetadataError, UnsupportedVersionError
from pytorch_saver._format import (
    FORMAT_VERSION,
    INTERNALS_KEY,
    RESERVED_KEYS,
    read_checkpoint,
    write_checkpoint,
)

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "tests" / "golden" / "v1"
RUST_CLI = REPO / "target" / "release" / "pytorch-saver"
TIMESTAMP = 1_795_000_000


# ---------------------------------------------------------------------------
# helpers


def metadata(
    kind: str = "inference", *, optimizer: dict[str, Any] | None = None, **user: Any
) -> dict[str, Any]:
    internals: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": {"class": "tests.AllDtypes"},
        "producer": {"library": "pytorch-saver", "version": "0.1.0", "language": "python"},
    }
    meta: dict[str, Any] = {"model_kwargs": {"width": 3}, "timestamp": TIMESTAMP}
    if optimizer is not None:
        internals["optimizer"] = optimizer
        meta["optim_kwargs"] = {"lr": 0.001}
    meta.update(user)
    meta[INTERNALS_KEY] = internals
    return meta


ADAM = {
    "class": "torch.optim.Adam",
    "param_groups": [{"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "params": [0, 1]}],
    "param_names": ["f32.matrix", "f64.matrix"],
    "state": {"0": {}, "1": {}},
}


def checkpoint_metadata(**user: Any) -> dict[str, Any]:
    return metadata("checkpoint", optimizer=json.loads(json.dumps(ADAM)), **user)


def every_dtype() -> dict[str, torch.Tensor]:
    """Every v1 dtype as a matrix (with extreme values), a scalar and an
    empty tensor, plus a non-contiguous tensor."""
    gen = torch.Generator().manual_seed(7)
    out: dict[str, torch.Tensor] = {}
    for dtype in support.DTYPES:
        name = str(dtype).removeprefix("torch.")
        if dtype == torch.bool:
            matrix = torch.randint(0, 2, (2, 3), generator=gen).bool()
        elif dtype.is_floating_point:
            matrix = torch.randn(2, 3, generator=gen, dtype=torch.float64).to(dtype)
            info = torch.finfo(dtype)
            matrix[0, 0], matrix[0, 1], matrix[0, 2] = info.max, info.tiny, -math.inf
            matrix[1, 0] = math.nan
        else:
            info_i = torch.iinfo(dtype)
            matrix = torch.randint(info_i.min, info_i.max, (2, 3), generator=gen, dtype=dtype)
            matrix[0, 0], matrix[0, 1] = info_i.min, info_i.max
        out[f"{name}.matrix"] = matrix
        out[f"{name}.scalar"] = matrix[1, 2].clone()
        out[f"{name}.empty"] = torch.empty(0, 4, dtype=dtype)
    out["transposed"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    return out


def optimizer_tensors() -> dict[str, torch.Tensor]:
    return {
        "state.0.step": torch.tensor(3.0),
        "state.0.exp_avg": torch.full((2, 3), 0.5),
        "state.0.exp_avg_sq": torch.full((2, 3), 0.25),
        "state.1.step": torch.tensor(3.0),
        "state.1.exp_avg": torch.zeros(2, 3, dtype=torch.float64),
        "state.1.exp_avg_sq": torch.ones(2, 3, dtype=torch.float64),
    }


def raw(t: torch.Tensor) -> bytes:
    """A tensor's bytes in C order (NaN-proof comparison)."""
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).tolist())


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype, name
        assert tuple(got[name].shape) == tuple(t.shape), name
        assert got[name].device.type == "cpu"
        assert raw(got[name]) == raw(t), name


def rust_verify(path: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUST_CLI), "verify", str(path)], capture_output=True, text=True, timeout=120
    )


needs_rust = pytest.mark.skipif(
    not RUST_CLI.exists(),
    reason=f"{RUST_CLI} is missing: build it with `make build` (cargo build --release, "
    "LIBTORCH_USE_PYTORCH=1 with the .venv python on PATH) at the repository root",
)


def members_of(path: str | Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def build_zip(members: list[tuple[str, bytes]], **edits: Any) -> bytes:
    """A ZIP laid out as FORMAT.md section 2 says (independently of the
    module under test), with optional edits to break one rule:
    ``method``/``crc``/``extra_pad``/``flags``: {member index: value}."""
    method = edits.get("method", {})
    crcs = edits.get("crc", {})
    extra_pad = edits.get("extra_pad", {})
    flags = edits.get("flags", {})
    out = bytearray()
    central = bytearray()
    for i, (name, data) in enumerate(members):
        encoded = name.encode()
        offset = len(out)
        pad = -(offset + 30 + len(encoded)) % 64
        if pad < 6:
            pad += 64
        pad += extra_pad.get(i, 0)
        extra = struct.pack("<HHH", 0xD935, pad - 4, 64) + bytes(pad - 6)
        crc = crcs.get(i, zlib.crc32(data))
        fields = (method.get(i, 0), 0, 0x21, crc, len(data), len(data), len(encoded))
        out += struct.pack("<IHH", 0x04034B50, 20, flags.get(i, 0))
        out += struct.pack("<HHHIIIH", *fields) + struct.pack("<H", len(extra))
        out += encoded + extra + data
        central += struct.pack("<IHHH", 0x02014B50, 0x0314, 20, flags.get(i, 0))
        central += struct.pack("<HHHIIIH", *fields)
        central += struct.pack("<HHHHII", 0, 0, 0, 0, 0o100644 << 16, offset) + encoded
    cd_offset = len(out)
    n = len(members)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_offset, 0)
    return bytes(out)


def safetensors_member(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A valid checkpoint with an optimizer member."""
    model = {"f32.matrix": torch.randn(2, 3), "f64.matrix": torch.randn(2, 3).double()}
    path = write_checkpoint(tmp_path, "good", checkpoint_metadata(), model, optimizer_tensors())
    return Path(path)


def refused(tmp_path: Path, data: bytes, *needles: str) -> FormatError:
    path = tmp_path / "bad.zip"
    path.write_bytes(data)
    with pytest.raises(FormatError) as info:
        read_checkpoint(path)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    return info.value


def with_metadata(good: Path, text: bytes) -> bytes:
    members = members_of(good)
    return build_zip([("metadata.json", text), *members[1:]])


# ---------------------------------------------------------------------------
# constants


def test_public_constants() -> None:
    assert FORMAT_VERSION == 1
    assert INTERNALS_KEY == "__pytorch_saver__"
    assert RESERVED_KEYS == {
        "model_kwargs",
        "optim_kwargs",
        "scheduler_kwargs",
        "timestamp",
        "__pytorch_saver__",
    }


# ---------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("with_optimizer", [False, True], ids=["inference", "checkpoint"])
def test_every_dtype_round_trips(tmp_path: Path, with_optimizer: bool) -> None:
    model = every_dtype()
    meta = checkpoint_metadata(loss=0.55) if with_optimizer else metadata(loss=0.55)
    opt = optimizer_tensors() if with_optimizer else None
    path = write_checkpoint(tmp_path, "rt", meta, model, opt)
    ckpt = read_checkpoint(path)
    assert ckpt.path == path
    assert ckpt.metadata == meta
    assert_same_tensors(ckpt.model, model)
    assert_same_tensors(ckpt.optimizer, opt or {})
    # Copies, not views of a mapping: the file can go away.
    os.unlink(path)
    assert raw(ckpt.model["float32.matrix"]) == raw(model["float32.matrix"])


def test_writer_accepts_parameters_and_grad_tensors(tmp_path: Path) -> None:
    lin = torch.nn.Linear(3, 2)
    model = {"weight": lin.weight, "bias": lin.bias * 2}  # a Parameter, a tensor with grad_fn
    ckpt = read_checkpoint(write_checkpoint(tmp_path, None, metadata(), model, None))
    assert_same_tensors(ckpt.model, {k: v.detach() for k, v in model.items()})
    assert not ckpt.model["weight"].requires_grad


def test_metadata_floats_round_trip_bit_for_bit(tmp_path: Path) -> None:
    floats = [0.1 + 0.2, 1e-8, 5e-324, 1.7976931348623157e308, -0.0, 2.5, 1 / 3]
    meta = metadata(values=floats, text="ünïcode ✓ \u2028", big=2**63, nested={"a": [None, True]})
    ckpt = read_checkpoint(write_checkpoint(tmp_path, None, meta, {}, None))
    assert [struct.pack("<d", x) for x in ckpt.metadata["values"]] == [
        struct.pack("<d", x) for x in floats
    ]
    assert ckpt.metadata == meta


def test_int_keys_are_written_in_decimal(tmp_path: Path) -> None:
    from collections import Counter

    meta = metadata(milestones=Counter({30: 1, 80: 2}))
    ckpt = read_checkpoint(write_checkpoint(tmp_path, None, meta, {}, None))
    assert ckpt.metadata["milestones"] == {"30": 1, "80": 2}


def test_forced_zip64_round_trips(tmp_path: Path) -> None:
    path = _format._write_checkpoint(
        tmp_path, None, checkpoint_metadata(), every_dtype(), optimizer_tensors(), force_zip64=True
    )
    data = Path(path).read_bytes()
    assert struct.pack("<I", 0x06064B50) in data[-100:]
    ckpt = read_checkpoint(path)
    assert_same_tensors(ckpt.model, every_dtype())


def test_layout_is_aligned_and_ordered_as_the_safetensors_library(tmp_path: Path) -> None:
    model = every_dtype()
    path = write_checkpoint(tmp_path, None, checkpoint_metadata(), model, optimizer_tensors())
    data = Path(path).read_bytes()
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [
            "metadata.json",
            "model.safetensors",
            "optimizer.safetensors",
        ]
        for info in infos:
            assert info.compress_type == zipfile.ZIP_STORED
            (nlen, xlen) = struct.unpack_from("<HH", data, info.header_offset + 26)
            start = info.header_offset + 30 + nlen + xlen
            assert start % 64 == 0, info.filename
            member = zf.read(info)
            if info.filename.endswith(".safetensors"):
                (n,) = struct.unpack_from("<Q", member)
                assert (8 + n) % 64 == 0
                header = member[8 : 8 + n]
                padding = len(header) - len(header.rstrip(b" "))
                assert header.startswith(b"{") and header.rstrip(b" ").endswith(b"}")
                assert padding < 64 and b" " not in header.rstrip(b" ")
                # A standalone safetensors file, whose data area is exactly
                # what the safetensors library writes for the same tensors.
                loaded = safetensors.torch.load(member)
                source = model if info.filename == "model.safetensors" else optimizer_tensors()
                assert_same_tensors(loaded, source)
                lib = safetensors.torch.save({k: v.contiguous() for k, v in source.items()})
                (lib_n,) = struct.unpack_from("<Q", lib)
                assert member[8 + n :] == lib[8 + lib_n :]


def test_file_names(tmp_path: Path) -> None:
    names = [
        write_checkpoint(tmp_path, "run", metadata(), {}, None),
        write_checkpoint(tmp_path, None, metadata(), {}, None),
        write_checkpoint(tmp_path, "", metadata(), {}, None),
        write_checkpoint(tmp_path, "run", checkpoint_metadata(), {}, {}),
        write_checkpoint(tmp_path, None, checkpoint_metadata(), {}, {}),
    ]
    assert [os.path.basename(p) for p in names] == [
        f"run_inference_{TIMESTAMP}.zip",
        f"inference_{TIMESTAMP}.zip",
        f"inference_{TIMESTAMP}-1.zip",
        f"run_checkpoint_{TIMESTAMP}.zip",
        f"checkpoint_{TIMESTAMP}.zip",
    ]
    assert all(os.path.dirname(p) == str(tmp_path) for p in names)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in names)


def test_a_taken_name_is_never_replaced(tmp_path: Path) -> None:
    first = write_checkpoint(tmp_path, "x", metadata(epoch=1), {"a": torch.ones(2)}, None)
    before = Path(first).read_bytes()
    second = write_checkpoint(tmp_path, "x", metadata(epoch=2), {"a": torch.ones(2)}, None)
    third = write_checkpoint(tmp_path, "x", metadata(epoch=3), {"a": torch.ones(2)}, None)
    assert second == first.removesuffix(".zip") + "-1.zip"
    assert third == first.removesuffix(".zip") + "-2.zip"
    assert Path(first).read_bytes() == before
    assert [read_checkpoint(p).metadata["epoch"] for p in (first, second, third)] == [1, 2, 3]
    # A name taken by something that is not a checkpoint is skipped too.
    (tmp_path / f"x_inference_{TIMESTAMP}-3.zip").write_text("mine")
    fourth = write_checkpoint(tmp_path, "x", metadata(), {}, None)
    assert fourth.endswith("-4.zip")
    assert (tmp_path / f"x_inference_{TIMESTAMP}-3.zip").read_text() == "mine"


# ---------------------------------------------------------------------------
# the writer refuses before creating anything, and cleans up after failures


@pytest.mark.parametrize(
    "bad_user",
    [
        {"loss": math.nan},
        {"loss": math.inf},
        {"obj": object()},
        {"s": {1, 2}},
        {"t": torch.ones(1)},
        {"k": {(1, 2): 3}},
        {"k": {1: "a", "1": "b"}},
        {"s": "lone \ud800 surrogate"},
        {"n": 2**64},
        {"n": -(2**63) - 1},
    ],
    ids=[
        "nan",
        "inf",
        "object",
        "set",
        "tensor",
        "tuple-key",
        "colliding-keys",
        "surrogate",
        "int-too-big",
        "int-too-small",
    ],
)
def test_unserializable_metadata_raises_before_any_file_exists(
    tmp_path: Path, bad_user: dict[str, Any]
) -> None:
    with pytest.raises(MetadataError):
        write_checkpoint(tmp_path, "x", metadata(**bad_user), {"a": torch.ones(1)}, None)
    assert os.listdir(tmp_path) == []


def test_metadata_error_names_the_value(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"metadata\['notes'\]\['loss'\].*nan"):
        write_checkpoint(tmp_path, None, metadata(notes={"loss": math.nan}), {}, None)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("model_kwargs"),
        lambda m: m.update(timestamp=-1),
        lambda m: m.update(timestamp=True),
        lambda m: m[INTERNALS_KEY].update(kind="training"),
        lambda m: m[INTERNALS_KEY].pop("producer"),
        lambda m: m.update(optim_kwargs={}),
        lambda m: m[INTERNALS_KEY].update(format_version=2),
    ],
    ids=["no-model-kwargs", "negative-ts", "bool-ts", "kind", "producer", "stray-optim", "v2"],
)
def test_metadata_breaking_the_schema_is_refused(tmp_path: Path, edit: Any) -> None:
    meta = metadata()
    edit(meta)
    with pytest.raises(MetadataError):
        write_checkpoint(tmp_path, None, meta, {}, None)
    assert os.listdir(tmp_path) == []


def test_json_nesting_is_bounded_as_readers_bound_it(tmp_path: Path) -> None:
    def nested(depth: int) -> Any:
        value: Any = 1
        for _ in range(depth):
            value = [value]
        return value

    # The top-level object is level 1: 126 lists inside make 127 levels.
    read_checkpoint(write_checkpoint(tmp_path, None, metadata(deep=nested(126)), {}, None))
    with pytest.raises(MetadataError, match="nested deeper"):
        write_checkpoint(tmp_path, "x", metadata(deep=nested(127)), {}, None)


@pytest.mark.parametrize(
    ("model", "optimizer", "match"),
    [
        ({"a": torch.ones(1, dtype=torch.complex64)}, None, "complex64"),
        ({"a": [1.0]}, None, "not a torch.Tensor"),
        ({"__metadata__": torch.ones(1)}, None, "__metadata__"),
        ({"a": torch.ones(2).to_sparse()}, None, "dense"),
        ({}, {}, "no optimizer"),
    ],
    ids=["dtype", "not-a-tensor", "reserved-name", "sparse", "undeclared-optimizer"],
)
def test_bad_tensors_are_refused_before_any_file_exists(
    tmp_path: Path, model: Any, optimizer: Any, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        write_checkpoint(tmp_path, None, metadata(), model, optimizer)
    assert os.listdir(tmp_path) == []


def test_optimizer_member_must_match_the_metadata(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no optimizer tensors"):
        write_checkpoint(tmp_path, None, checkpoint_metadata(), {}, None)
    with pytest.raises(ValueError, match="has no entry"):
        write_checkpoint(
            tmp_path, None, checkpoint_metadata(), {}, {"state.7.exp_avg": torch.ones(1)}
        )
    with pytest.raises(ValueError, match="state.<index>.<key>"):
        write_checkpoint(tmp_path, None, checkpoint_metadata(), {}, {"exp_avg": torch.ones(1)})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("prefix", ["a/b", "nul\0", ".hidden", "../up"])
def test_bad_prefixes_are_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ValueError):
        write_checkpoint(tmp_path, prefix, metadata(), {}, None)
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_checkpoint(tmp_path / "nope", None, metadata(), {}, None)


def _fail(*args: Any, **kwargs: Any) -> Any:
    raise OSError(28, "No space left on device (injected)")


@pytest.mark.parametrize("where", ["tensor-data", "fsync", "pwrite", "link"])
def test_a_failure_mid_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    existing = write_checkpoint(tmp_path, "x", metadata(), {"a": torch.ones(3)}, None)
    before = Path(existing).read_bytes()
    calls = {"n": 0}
    real_bytes = _format._tensor_bytes

    def second_tensor_fails(t: Any, member: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error (injected)")
        return real_bytes(t, member)

    if where == "tensor-data":
        monkeypatch.setattr(_format, "_tensor_bytes", second_tensor_fails)
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", _fail)
    elif where == "pwrite":
        monkeypatch.setattr(os, "pwrite", _fail)
    else:
        monkeypatch.setattr(os, "link", _fail)
    with pytest.raises(OSError, match="injected"):
        write_checkpoint(tmp_path, "x", metadata(), {"a": torch.ones(3), "b": torch.ones(2)}, None)
    assert os.listdir(tmp_path) == [os.path.basename(existing)]
    assert Path(existing).read_bytes() == before


def test_temporary_file_is_in_the_target_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_link = os.link

    def spy(src: str, dst: str) -> None:
        seen.append(src)
        assert os.path.exists(src)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", spy)
    path = write_checkpoint(tmp_path, None, metadata(), {}, None)
    assert len(seen) == 1
    assert os.path.dirname(seen[0]) == str(tmp_path)
    assert os.path.basename(seen[0]).startswith(".")
    assert not os.path.exists(seen[0])
    assert os.listdir(tmp_path) == [os.path.basename(path)]


# ---------------------------------------------------------------------------
# Rust reads Python, Python reads Rust


@needs_rust
@pytest.mark.parametrize(
    "case", ["inference", "checkpoint", "checkpoint-no-tensor-state", "zip64", "empty-model"]
)
def test_rust_cli_verifies_what_python_writes(tmp_path: Path, case: str) -> None:
    model = every_dtype()
    if case == "inference":
        path = write_checkpoint(tmp_path, "py", metadata(loss=0.55), model, None)
    elif case == "checkpoint":
        path = write_checkpoint(tmp_path, "py", checkpoint_metadata(), model, optimizer_tensors())
    elif case == "checkpoint-no-tensor-state":
        path = write_checkpoint(tmp_path, "py", checkpoint_metadata(), model, {})
    elif case == "zip64":
        path = _format._write_checkpoint(
            tmp_path, "py", checkpoint_metadata(), model, optimizer_tensors(), force_zip64=True
        )
    else:
        path = write_checkpoint(tmp_path, "py", metadata(), {}, None)
    result = rust_verify(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK")
    if shutil.which("unzip"):
        unzip = subprocess.run(["unzip", "-t", path], capture_output=True, text=True)
        assert unzip.returncode == 0, unzip.stdout + unzip.stderr


@needs_rust
def test_rust_cli_rejects_what_python_rejects(tmp_path: Path, good: Path) -> None:
    # A sanity check that the CLI is a real second opinion.
    data = bytearray(good.read_bytes())
    data[-30] ^= 0xFF
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    assert rust_verify(tmp_path / "bad.zip").returncode == 1


GOLDEN_FILES = sorted(GOLDEN.glob("*.zip"))


def test_golden_files_exist() -> None:
    assert GOLDEN_FILES, f"no golden files in {GOLDEN}"


def tensor_from_hex(entry: dict[str, Any]) -> torch.Tensor:
    dtype = _format._DTYPES_BY_NAME[entry["dtype"]].torch_dtype
    data = bytes.fromhex(entry["hex"])
    flat = torch.tensor(list(data), dtype=torch.uint8)
    if not data:
        return torch.empty(entry["shape"], dtype=dtype)
    return flat.view(dtype).reshape(entry["shape"])


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.name)
def test_reads_every_golden_file_as_its_sidecar_says(path: Path) -> None:
    sidecar = json.loads(Path(f"{path}.json").read_text())
    ckpt = read_checkpoint(path)
    assert ckpt.metadata == sidecar["metadata"]
    tensors = sidecar["tensors"]
    assert set(tensors) <= {"model.safetensors", "optimizer.safetensors"}
    for member, got in (
        ("model.safetensors", ckpt.model),
        ("optimizer.safetensors", ckpt.optimizer),
    ):
        want = tensors.get(member, {})
        assert set(got) == set(want), member
        for name, entry in want.items():
            assert got[name].dtype == _format._DTYPES_BY_NAME[entry["dtype"]].torch_dtype
            assert list(got[name].shape) == entry["shape"]
            assert raw(got[name]).hex() == entry["hex"], f"{member}: {name}"
            assert raw(got[name]) == raw(tensor_from_hex(entry))


@pytest.mark.parametrize(
    "path", [p for p in GOLDEN_FILES if p.name.startswith("rust_")], ids=lambda p: p.name
)
def test_python_writes_what_rust_writes(tmp_path: Path, path: Path) -> None:
    """Given the same content, the Python writer lays a file out exactly as
    the Rust writer did: identical safetensors members at identical offsets,
    and an identical file wherever both print the metadata's JSON alike
    (they may not: Rust writes 1e-8, Python 1e-08)."""
    ckpt = read_checkpoint(path)
    has_optimizer = "optimizer" in ckpt.metadata[INTERNALS_KEY]
    out = write_checkpoint(
        tmp_path, None, ckpt.metadata, ckpt.model, ckpt.optimizer if has_optimizer else None
    )
    rust, python = members_of(path), members_of(out)
    assert [n for n, _ in rust] == [n for n, _ in python]
    for (name, a), (_, b) in zip(rust[1:], python[1:], strict=True):
        assert a == b, name
    if rust[0][1] == python[0][1]:
        assert Path(out).read_bytes() == path.read_bytes()
    else:
        assert json.loads(rust[0][1]) == json.loads(python[0][1])


# ---------------------------------------------------------------------------
# the reader refuses malformed files, naming the problem


def test_the_test_zip_builder_makes_valid_files(tmp_path: Path, good: Path) -> None:
    path = tmp_path / "rebuilt.zip"
    path.write_bytes(build_zip(members_of(good)))
    ckpt = read_checkpoint(path)
    assert set(ckpt.optimizer) == set(optimizer_tensors())


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.zip")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.zip"
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="not a regular file"):
        read_checkpoint(fifo)


@pytest.mark.parametrize("cut", [1, 22, 100, -100])
def test_truncated_file(tmp_path: Path, good: Path, cut: int) -> None:
    data = good.read_bytes()
    kept = data[:cut] if cut < 0 else data[:-cut]
    refused(tmp_path, kept, "truncated")


def test_empty_and_non_zip_files(tmp_path: Path) -> None:
    refused(tmp_path, b"", "truncated or not a ZIP")
    refused(tmp_path, b"hello world, this is not a zip archive at all", "not a ZIP")


def test_trailing_bytes(tmp_path: Path, good: Path) -> None:
    refused(tmp_path, good.read_bytes() + b"junk!", "5 trailing bytes")


def test_archive_comment(tmp_path: Path, good: Path) -> None:
    data = bytearray(good.read_bytes() + b"hi")
    data[-4:-2] = struct.pack("<H", 2)
    refused(tmp_path, bytes(data), "archive comment")


@pytest.mark.parametrize(
    ("member", "where"),
    [(0, "metadata.json"), (1, "model.safetensors"), (2, "optimizer.safetensors")],
)
def test_flipped_byte_is_a_crc_mismatch(
    tmp_path: Path, good: Path, member: int, where: str
) -> None:
    with zipfile.ZipFile(good) as zf:
        info = zf.infolist()[member]
        size = info.file_size
    data = bytearray(good.read_bytes())
    (nlen, xlen) = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + nlen + xlen
    for at in (start + 3, start + size - 1):  # in the header, in the data
        flipped = bytearray(data)
        flipped[at] ^= 0x01
        refused(tmp_path, bytes(flipped), f"CRC-32 mismatch in {where}", f"bytes {start}..")


def test_compressed_member(tmp_path: Path, good: Path) -> None:
    data = build_zip(members_of(good), method={1: 8})
    refused(tmp_path, data, "model.safetensors is compressed (method 8)")


def test_forbidden_flags(tmp_path: Path, good: Path) -> None:
    refused(tmp_path, build_zip(members_of(good), flags={2: 1}), "optimizer.safetensors", "flags")


def test_misaligned_data(tmp_path: Path, good: Path) -> None:
    data = build_zip(members_of(good), extra_pad={1: 1})
    refused(tmp_path, data, "model.safetensors", "not on a 64-byte boundary")


def test_extra_field_not_filled_by_blocks(tmp_path: Path, good: Path) -> None:
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        offset = zf.infolist()[1].header_offset
    (nlen,) = struct.unpack_from("<H", data, offset + 26)
    # The padding block claims 2 bytes more than the extra field holds.
    block = offset + 30 + nlen
    (size,) = struct.unpack_from("<H", data, block + 2)
    data[block + 2 : block + 4] = struct.pack("<H", size + 2)
    refused(tmp_path, bytes(data), "model.safetensors", "extra field")


def test_duplicate_member(tmp_path: Path, good: Path) -> None:
    members = members_of(good)
    refused(tmp_path, build_zip([*members[:2], members[1]]), "duplicate member model.safetensors")


def test_unknown_member(tmp_path: Path, good: Path) -> None:
    members = members_of(good)
    refused(tmp_path, build_zip([*members, ("notes.txt", b"hi")]), "unexpected member 'notes.txt'")


def test_member_order(tmp_path: Path, good: Path) -> None:
    m = members_of(good)
    refused(tmp_path, build_zip([m[1], m[0], m[2]]), "member model.safetensors at position 0")
    refused(tmp_path, build_zip([m[0], m[2], m[1]]), "member model.safetensors at position 2")


def test_bytes_between_members(tmp_path: Path, good: Path) -> None:
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        second = zf.infolist()[1].header_offset
    # Point the central directory entry of the second member 64 bytes
    # later than where its local header is: the bytes before it are part of
    # no member (or the first member runs into it).
    cd_offset = struct.unpack_from("<I", data, len(data) - 6)[0]
    p = cd_offset
    for _ in range(2):
        nlen, xlen, clen = struct.unpack_from("<HHH", data, p + 28)
        if struct.unpack_from("<I", data, p + 42)[0] == second:
            data[p + 42 : p + 46] = struct.pack("<I", second + 64)
        p += 46 + nlen + xlen + clen
    refused(tmp_path, bytes(data), "model.safetensors")


def test_local_and_central_headers_disagree(tmp_path: Path, good: Path) -> None:
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        offset = zf.infolist()[1].header_offset
    data[offset + 10 : offset + 12] = b"\x12\x34"  # time: ignored
    read_checkpoint(_write(tmp_path / "time.zip", bytes(data)))
    data[offset + 6 : offset + 8] = struct.pack("<H", 1 << 11)  # flags (UTF-8 bit)
    refused(tmp_path, bytes(data), "model.safetensors", "disagree on flags")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_too_many_entries(tmp_path: Path, good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[-14:-10] = struct.pack("<HH", 17, 17)
    refused(tmp_path, bytes(data), "entry count is 17")


def test_metadata_duplicate_keys(tmp_path: Path, good: Path) -> None:
    text = json.dumps(checkpoint_metadata())[:-1] + ', "model_kwargs": {}}'
    refused(tmp_path, with_metadata(good, text.encode()), "metadata.json", "duplicate key")
    nested = json.dumps(checkpoint_metadata(x={"a": 1})).replace('{"a": 1}', '{"a": 1, "a": 2}')
    refused(tmp_path, with_metadata(good, nested.encode()), "duplicate key 'a'")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b"[1, 2]", "top level is not a JSON object"),
        (b'"text"', "top level is not a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "metadata.json"),
        (b'{"loss": NaN}', "NaN"),
        (b'{"loss": 1e400}', "out of range"),
        (b'{"s": "\\ud800"}', "lone surrogate"),
        (b"[" * 200 + b"]" * 200, "metadata.json"),
    ],
    ids=["array", "string", "utf8", "syntax", "nan", "overflow", "surrogate", "deep"],
)
def test_metadata_that_is_not_a_json_object(
    tmp_path: Path, good: Path, text: bytes, needle: str
) -> None:
    refused(tmp_path, with_metadata(good, text), "metadata.json", needle)


def test_metadata_nesting_limit(tmp_path: Path, good: Path) -> None:
    def nested(depth: int) -> str:
        return "[" * depth + "1" + "]" * depth

    meta = json.dumps(checkpoint_metadata())[:-1]
    ok = with_metadata(good, (meta + f', "deep": {nested(126)}}}').encode())
    read_checkpoint(_write(tmp_path / "ok.zip", ok))
    deep = with_metadata(good, (meta + f', "deep": {nested(127)}}}').encode())
    refused(tmp_path, deep, "nested deeper than 127")


@pytest.mark.parametrize("version", [2, 0, 1.0, -1, 10**30])
def test_unknown_format_version(tmp_path: Path, good: Path, version: Any) -> None:
    meta = checkpoint_metadata()
    meta[INTERNALS_KEY]["format_version"] = version
    # Checked first: a newer file is reported as such, not as a broken one.
    del meta[INTERNALS_KEY]["model"]
    with pytest.raises(UnsupportedVersionError, match="format version .* is not supported"):
        read_checkpoint(_write(tmp_path / "v.zip", with_metadata(good, json.dumps(meta).encode())))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m[INTERNALS_KEY].update(format_version="1"), "must be an integer"),
        (lambda m: m[INTERNALS_KEY].update(format_version=True), "must be an integer"),
        (lambda m: m.pop(INTERNALS_KEY), "__pytorch_saver__: missing"),
        (lambda m: m[INTERNALS_KEY].update(kind="training"), "kind"),
        (lambda m: m.pop("optim_kwargs"), "optim_kwargs: missing"),
        (lambda m: m.update(timestamp=1.5), "timestamp"),
        (lambda m: m[INTERNALS_KEY]["producer"].update(language=""), "producer.language"),
        (lambda m: m[INTERNALS_KEY].update(kind="inference"), "inference file"),
        (
            lambda m: m[INTERNALS_KEY].update(scheduler={"class": "StepLR", "state": []}),
            "scheduler.state",
        ),
        (
            lambda m: m[INTERNALS_KEY]["optimizer"].update(param_names=["a", "a"]),
            "appears twice",
        ),
        (
            lambda m: m[INTERNALS_KEY]["optimizer"].pop("param_names"),
            "param_names: missing",
        ),
        (
            lambda m: m[INTERNALS_KEY]["optimizer"]["param_groups"][0].update(params=[0, 2]),
            "not an index",
        ),
        (
            lambda m: m[INTERNALS_KEY]["optimizer"]["param_groups"][0].update(params=[0]),
            "parameter 1 is in no group",
        ),
        (
            lambda m: m[INTERNALS_KEY]["optimizer"]["param_groups"].append({"params": [1]}),
            "more than one group",
        ),
        (
            lambda m: m[INTERNALS_KEY]["optimizer"].update(state={"01": {}}),
            "not a parameter index",
        ),
    ],
    ids=[
        "version-string",
        "version-bool",
        "no-internals",
        "kind",
        "optim-kwargs",
        "float-ts",
        "producer",
        "inference-with-optimizer",
        "scheduler-state",
        "param-names-twice",
        "param-names-missing",
        "index-out-of-range",
        "index-in-no-group",
        "index-in-two-groups",
        "state-key",
    ],
)
def test_metadata_breaking_the_schema(tmp_path: Path, good: Path, edit: Any, needle: str) -> None:
    meta = checkpoint_metadata()
    edit(meta)
    err = refused(tmp_path, with_metadata(good, json.dumps(meta).encode()), needle)
    assert not isinstance(err, UnsupportedVersionError)


def test_declared_and_present_members_must_agree(tmp_path: Path, good: Path) -> None:
    m = members_of(good)
    refused(tmp_path, build_zip(m[:2]), "missing member optimizer.safetensors")
    inference = json.dumps(metadata()).encode()
    refused(
        tmp_path,
        build_zip([("metadata.json", inference), m[1], m[2]]),
        "unexpected member 'optimizer.safetensors'",
    )
    refused(tmp_path, build_zip([("metadata.json", inference)]), "missing member model")


def _with_model_member(good: Path, member: bytes) -> bytes:
    m = members_of(good)
    return build_zip([m[0], ("model.safetensors", member), m[2]])


def test_overlapping_tensor_data(tmp_path: Path, good: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    data = _with_model_member(good, safetensors_member(header, bytes(12)))
    refused(tmp_path, data, "model.safetensors", "tensor 'b' (data bytes 4..12)", "overlaps")


def test_hole_in_tensor_data(tmp_path: Path, good: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    }
    data = _with_model_member(good, safetensors_member(header, bytes(20)))
    refused(tmp_path, data, "tensor 'b' (data bytes 12..20)", "4 unclaimed bytes")
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    data = _with_model_member(good, safetensors_member(header, bytes(10)))
    refused(tmp_path, data, "model.safetensors", "2 bytes of tensor data are claimed by no tensor")


@pytest.mark.parametrize(
    ("header", "size", "needle"),
    [
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "needs 12 bytes"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}}, 8, "out of range"),
        ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, 8, "dtype C64"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}},
            8,
            "unknown field 'x'",
        ),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "shape"),
        ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, 8, "overflows"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, 8, "end before start"),
        ({"__metadata__": {"k": 1}}, 0, "__metadata__"),
    ],
    ids=["size", "range", "dtype", "field", "negative", "overflow", "reversed", "metadata"],
)
def test_bad_tensor_headers(
    tmp_path: Path, good: Path, header: dict[str, Any], size: int, needle: str
) -> None:
    data = _with_model_member(good, safetensors_member(header, bytes(size)))
    refused(tmp_path, data, "model.safetensors", needle)


def test_tensor_header_length_is_bounded(tmp_path: Path, good: Path) -> None:
    member = struct.pack("<Q", 10**9) + b"{}"
    refused(tmp_path, _with_model_member(good, member), "above the limit of 100000000")
    member = struct.pack("<Q", 1000) + b"{}"
    refused(tmp_path, _with_model_member(good, member), "runs past the end")


def test_bool_bytes_must_be_zero_or_one(tmp_path: Path, good: Path) -> None:
    header = {"a": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}}
    refused(tmp_path, _with_model_member(good, safetensors_member(header, b"\x00\x01\x02")), "BOOL")


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("exp_avg", "state.<index>.<key>"),
        ("state.7.exp_avg", "parameter 7 has no entry"),
        ("state.01.exp_avg", "not a canonical decimal parameter index"),
        ("state.0.", "state.<index>.<key>"),
        ("state.x.exp_avg", "state.<index>.<key>"),
        ("state.1.lr", "both a tensor and a JSON value"),
    ],
)
def test_bad_optimizer_tensor_name(tmp_path: Path, good: Path, name: str, needle: str) -> None:
    meta = checkpoint_metadata()
    meta[INTERNALS_KEY]["optimizer"]["state"]["1"] = {"lr": 0.5}
    m = members_of(good)
    member = safetensors_member(
        {name: {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, bytes(4)
    )
    data = build_zip(
        [("metadata.json", json.dumps(meta).encode()), m[1], ("optimizer.safetensors", member)]
    )
    refused(tmp_path, data, "optimizer.safetensors", repr(name), needle)
