"""The format in Python: files round-trip every dtype, the Rust core accepts
what Python writes and Python reads what Rust wrote, and the writer never
replaces a file nor leaves one behind when it fails. Version 2 (FORMAT.md
section 11): every typed-value tag, extra state and its member, the weights
kind and the manager block round-trip; version 1 is written on request or
refused; and a few malformed version 2 files are refused with the kind of
the check that fails first. The other malformed files the reader must
refuse are the shared corpus (tests/corpus)."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import support
import torch
from pytorch_saver import _format
from pytorch_saver._errors import FormatError, InvalidArgumentError, MetadataError
from pytorch_saver._format import (
    EXTRA_MEMBER,
    FORMAT_VERSION,
    INTERNALS_KEY,
    RESERVED_KEYS,
    SUPPORTED_VERSIONS,
    CheckpointReader,
    ExtraEntry,
    ManagerRecord,
    Metadata,
    read_checkpoint,
    write_checkpoint,
    writer,
)
from pytorch_saver._format.metadata import Internals, Producer
from pytorch_saver._format.typed import check_typed, kwargs_from_v1, kwargs_to_v1

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


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A valid checkpoint with an optimizer member."""
    model = {"f32.matrix": torch.randn(2, 3), "f64.matrix": torch.randn(2, 3).double()}
    path = write_checkpoint(tmp_path, "good", checkpoint_metadata(), model, optimizer_tensors())
    return Path(path)


# ---------------------------------------------------------------------------
# constants


def test_public_constants() -> None:
    assert FORMAT_VERSION == 2
    assert SUPPORTED_VERSIONS == (1, 2)
    assert EXTRA_MEMBER == "extra.safetensors"
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
        lambda m: m[INTERNALS_KEY].update(format_version=3),
    ],
    ids=["no-model-kwargs", "negative-ts", "bool-ts", "kind", "producer", "stray-optim", "v3"],
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
    real_bytes = _format.writer._tensor_bytes

    def second_tensor_fails(t: Any, member: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error (injected)")
        return real_bytes(t, member)

    if where == "tensor-data":
        monkeypatch.setattr(_format.writer, "_tensor_bytes", second_tensor_fails)
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
# the reader: what the shared corpus of malformed files cannot hold
#
# Each malformed file the reader must refuse is a file of tests/corpus, which
# the Python, Rust, C and Go suites all run; here only what is not a file
# there: paths that are no regular file, and a change a reader must ignore.


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.zip")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.zip"
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="not a regular file"):
        read_checkpoint(fifo)


def test_dos_time_and_date_are_ignored(tmp_path: Path, good: Path) -> None:
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        offset = zf.infolist()[1].header_offset
    data[offset + 10 : offset + 14] = b"\x12\x34\x56\x78"  # the local header's time and date
    path = tmp_path / "time.zip"
    path.write_bytes(bytes(data))
    assert set(read_checkpoint(path).optimizer) == set(optimizer_tensors())


# ---------------------------------------------------------------------------
# version 2: typed values, extra state, the weights kind, the manager block

PRODUCER = Producer("pytorch-saver", "0.1.0", "python")

EVERY_TAG_KWARGS: dict[str, Any] = {
    "block": {"__type__": "class", "name": "torchvision.models.resnet.BasicBlock"},
    "betas": {"__type__": "tuple", "items": [0.9, 0.999]},
    "by_id": {"__type__": "dict", "items": [[1, "one"], [{"__type__": "tuple", "items": []}, 2]]},
    "escaped": {"__type__": "dict", "items": [["__type__", "a key, not a tag"]]},
    "dtype": {"__type__": "dtype", "name": "bfloat16"},
    "floats": [{"__type__": "float", "value": v} for v in ("inf", "-inf", "nan")],
    "config": {
        "__type__": "object",
        "codec": "dataclass",
        "class": "mypkg.Config",
        "fields": {"width": 3, "act": {"__type__": "class", "name": "torch.nn.ReLU"}},
    },
    "args": {"__type__": "object", "codec": "namespace", "class": None, "fields": {}},
    "plain": {"nested": [1, "two", None, True, 2.5]},
}

SCHEDULER_KWARGS: dict[str, Any] = {
    "schedulers": [
        {
            "__type__": "spec",
            "class": "torch.optim.lr_scheduler.LambdaLR",
            "kwargs": {
                "lr_lambda": {"__type__": "callable", "name": "train.warmup"},
            },
        },
        {
            "__type__": "spec",
            "class": "torch.optim.lr_scheduler.StepLR",
            "kwargs": {"step_size": 3},
        },
    ],
    "milestones": [2],
}

EXTRA = (
    ExtraEntry(
        "rng",
        "pytorch_saver.RNG",
        {
            "torch": {
                "cpu": {"__type__": "tensor", "name": "rng.torch.cpu"},
                "cuda": [{"__type__": "tensor", "name": "rng.torch.cuda.0"}],
            },
            "python": {
                "__type__": "tuple",
                "items": [3, {"__type__": "tuple", "items": [1, 2]}, None],
            },
        },
    ),
    ExtraEntry("counters", "pytorch_saver.Counters", {"step": 30, "epoch": 2}),
    ExtraEntry("gen", "torch.Generator", {"state": {"__type__": "tensor", "name": "gen.state"}}),
)


def extra_tensors() -> dict[str, torch.Tensor]:
    return {
        "rng.torch.cpu": torch.get_rng_state(),
        "rng.torch.cuda.0": torch.arange(16, dtype=torch.uint8),
        "gen.state": torch.Generator().manual_seed(3).get_state(),
    }


def v2_checkpoint(**changes: Any) -> Metadata:
    """A version 2 training checkpoint holding every tag, extra state and a
    manager block."""
    internals = Internals(
        kind="checkpoint",
        model_class="tests.AllDtypes",
        producer=PRODUCER,
        optimizer=_format.metadata.parse(checkpoint_metadata()).internals.optimizer,
        scheduler=_format.metadata.SchedulerSection("torch.optim.lr_scheduler.SequentialLR", {}),
        extra=EXTRA,
        manager=ManagerRecord("run-7", 30, {"loss": 0.25, "top1": 1}),
    )
    fields: dict[str, Any] = {
        "model_kwargs": EVERY_TAG_KWARGS,
        "timestamp": TIMESTAMP,
        "internals": internals,
        "optim_kwargs": {"lr": 0.001, "betas": {"__type__": "tuple", "items": [0.9, 0.999]}},
        "scheduler_kwargs": SCHEDULER_KWARGS,
        "user": {"note": {"__type__": "tuple"}},
    }
    fields.update(changes)
    return Metadata(**fields)


def test_every_tag_and_the_extra_state_round_trip(tmp_path: Path) -> None:
    meta = v2_checkpoint()
    model, extra = every_dtype(), extra_tensors()
    path = write_checkpoint(tmp_path, "v2", meta, model, optimizer_tensors(), extra)
    assert [name for name, _ in members_of(path)] == [
        "metadata.json",
        "model.safetensors",
        "optimizer.safetensors",
        "extra.safetensors",
    ]
    ckpt = read_checkpoint(path)
    assert ckpt.metadata == _format.metadata.to_json(meta)
    assert ckpt.metadata[INTERNALS_KEY]["format_version"] == 2
    assert_same_tensors(ckpt.model, model)
    assert_same_tensors(ckpt.optimizer, optimizer_tensors())
    assert_same_tensors(ckpt.extra, extra)
    with CheckpointReader(path) as reader:
        assert reader.scan.metadata == meta
        assert reader.scan.extra is not None
        assert [t.name for t in reader.scan.extra.tensors] == sorted(extra)
        assert_same_tensors(reader.read_extra_tensors(), extra)
    # User metadata is plain JSON: "__type__" there is no tag.
    assert reader.scan.metadata.flat()["note"] == {"__type__": "tuple"}
    assert reader.scan.metadata.extra_tensor_names() == [
        "rng.torch.cpu",
        "rng.torch.cuda.0",
        "gen.state",
    ]


@needs_rust
def test_rust_cli_verifies_a_version_2_file_python_writes(tmp_path: Path) -> None:
    path = write_checkpoint(
        tmp_path, "py", v2_checkpoint(), every_dtype(), optimizer_tensors(), extra_tensors()
    )
    result = rust_verify(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK")


def test_extra_state_without_tensors_has_an_empty_member(tmp_path: Path) -> None:
    meta = v2_checkpoint(
        internals=Internals(
            "checkpoint",
            "tests.AllDtypes",
            PRODUCER,
            extra=(ExtraEntry("counters", "pytorch_saver.Counters", {"step": 1}),),
        ),
        optim_kwargs=None,
        scheduler_kwargs=None,
    )
    ckpt = read_checkpoint(write_checkpoint(tmp_path, None, meta, {}, None, {}))
    assert ckpt.extra == {}
    assert [n for n, _ in members_of(ckpt.path)][-1] == EXTRA_MEMBER


def test_a_weights_file_holds_tensors_and_no_class(tmp_path: Path) -> None:
    meta = Metadata(
        model_kwargs=None,
        timestamp=TIMESTAMP,
        internals=Internals("weights", None, PRODUCER, manager=ManagerRecord("s", 0, {})),
        user={"source": "consolidated"},
    )
    model = every_dtype()
    path = write_checkpoint(tmp_path, None, meta, model, None)
    assert os.path.basename(path) == f"weights_{TIMESTAMP}.zip"
    ckpt = read_checkpoint(path)
    block = ckpt.metadata[INTERNALS_KEY]
    assert block["kind"] == "weights" and "model" not in block
    assert "model_kwargs" not in ckpt.metadata
    assert_same_tensors(ckpt.model, model)
    with CheckpointReader(path) as reader:
        assert reader.scan.metadata == meta
        assert reader.scan.metadata.flat() == {"timestamp": TIMESTAMP, "source": "consolidated"}


@pytest.mark.parametrize(
    ("model_kwargs", "extra", "match"),
    [
        ({"b": {"__type__": "set", "items": []}}, None, r'model_kwargs\.b: unknown type tag "set"'),
        (
            {"b": {"__type__": "class", "name": "x..y"}},
            None,
            r'model_kwargs\.b: "class" tag: "name" "x\.\.y" is not a class name',
        ),
        ({"b": {"__type__": "tensor", "name": "t"}}, None, "only appear in extra state"),
        ({"b": {"__type__": "callable", "name": "f"}}, None, "only appear in scheduler_kwargs"),
        (
            {},
            {"a": {"__type__": "tensor", "name": "t"}, "b": {"__type__": "tensor", "name": "t"}},
            "which the tag at __pytorch_saver__.extra.e.state.a names too",
        ),
    ],
    ids=["unknown-tag", "class-name", "tensor-in-kwargs", "callable-in-kwargs", "shared-tensor"],
)
def test_the_writer_refuses_malformed_typed_values_before_any_file_exists(
    tmp_path: Path, model_kwargs: dict[str, Any], extra: Any, match: str
) -> None:
    entries = None if extra is None else (ExtraEntry("e", "mypkg.E", extra),)
    meta = Metadata(
        model_kwargs=model_kwargs,
        timestamp=TIMESTAMP,
        internals=Internals("checkpoint", "m.M", PRODUCER, extra=entries),
    )
    with pytest.raises(MetadataError, match=match) as info:
        write_checkpoint(tmp_path, None, meta, {}, None, None if extra is None else {})
    assert info.value.kind == "TypedValue"
    assert os.listdir(tmp_path) == []


def test_the_writer_checks_extra_tensors_against_their_tags(tmp_path: Path) -> None:
    meta = v2_checkpoint()
    cases = [
        ({**extra_tensors(), "stray": torch.ones(1)}, "'stray' is named by no tensor tag"),
        ({"rng.torch.cpu": torch.ones(1)}, "names 'rng.torch.cuda.0'"),
        (None, "no extra tensors were given"),
    ]
    for extra, match in cases:
        with pytest.raises(InvalidArgumentError, match=match):
            write_checkpoint(tmp_path, None, meta, {}, optimizer_tensors(), extra)
    with pytest.raises(InvalidArgumentError, match="declares no extra state"):
        write_checkpoint(tmp_path, None, metadata(), {}, None, {})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# version 1, written on request (FORMAT.md 11.7, 11.8)


def test_version_1_is_written_on_request_with_plain_kwargs(tmp_path: Path) -> None:
    kwargs = {
        "escaped": {"__type__": "dict", "items": [["__type__", "x"], ["k", [1, 2]]]},
        "nested": [{"__type__": "dict", "items": [["a", {"__type__": "dict", "items": []}]]}],
        "plain": {"a": 1},
    }
    meta = Metadata(
        model_kwargs=kwargs,
        timestamp=TIMESTAMP,
        internals=Internals("inference", "m.M", PRODUCER, format_version=1),
    )
    path = write_checkpoint(tmp_path, None, meta, {"w": torch.ones(2)}, None)
    ckpt = read_checkpoint(path)
    assert ckpt.metadata[INTERNALS_KEY]["format_version"] == 1
    # In the file, plain JSON: "__type__" is just a key in version 1 ...
    assert ckpt.metadata["model_kwargs"] == {
        "escaped": {"__type__": "x", "k": [1, 2]},
        "nested": [{"a": {}}],
        "plain": {"a": 1},
    }
    # ... which a reader holds as a dict tag (11.7), the value written.
    with CheckpointReader(path) as reader:
        assert reader.scan.metadata.model_kwargs == {
            "escaped": {"__type__": "dict", "items": [["__type__", "x"], ["k", [1, 2]]]},
            "nested": [{"a": {}}],
            "plain": {"a": 1},
        }
    if RUST_CLI.exists():
        result = rust_verify(path)
        assert result.returncode == 0, result.stdout + result.stderr


V1_REFUSALS: dict[str, dict[str, Any]] = {
    "weights": {"kind": "weights", "model_class": None, "model_kwargs": None},
    "extra": {"extra": (ExtraEntry("c", "pytorch_saver.Counters", {}),)},
    "manager": {"manager": ManagerRecord("run", 1, {})},
    "tuple": {"model_kwargs": {"betas": {"__type__": "tuple", "items": [0.9, 0.99]}}},
    "int-key": {"model_kwargs": {"d": {"__type__": "dict", "items": [[1, "a"]]}}},
    "deep-dtype": {"model_kwargs": {"l": [{"x": {"__type__": "dtype", "name": "float32"}}]}},
    "float": {"model_kwargs": {"f": {"__type__": "float", "value": "inf"}}},
}


@pytest.mark.parametrize("case", sorted(V1_REFUSALS))
def test_version_1_refuses_what_needs_version_2_before_any_file_exists(
    tmp_path: Path, case: str
) -> None:
    change = V1_REFUSALS[case]
    extra = change.get("extra")
    meta = Metadata(
        model_kwargs=change.get("model_kwargs", {"w": 1}),
        timestamp=TIMESTAMP,
        internals=Internals(
            change.get("kind", "checkpoint"),
            change.get("model_class", "m.M"),
            PRODUCER,
            format_version=1,
            extra=extra,
            manager=change.get("manager"),
        ),
    )
    with pytest.raises(InvalidArgumentError, match="format version 1 cannot hold") as info:
        write_checkpoint(tmp_path, None, meta, {}, None, None if extra is None else {})
    assert info.value.kind == "InvalidInput"
    assert os.listdir(tmp_path) == []


def test_version_1_conversions_are_inverse() -> None:
    v1 = {"a": {"__type__": 1, "b": [{"__type__": "tuple"}]}, "__type__": "kwarg"}
    typed = kwargs_from_v1(v1)
    assert typed == {
        "a": {
            "__type__": "dict",
            "items": [
                ["__type__", 1],
                ["b", [{"__type__": "dict", "items": [["__type__", "tuple"]]}]],
            ],
        },
        "__type__": "kwarg",
    }
    assert check_typed(typed["a"], "model_kwargs.a", where="model_kwargs") == []
    assert kwargs_to_v1(typed, "model_kwargs") == v1


def test_a_version_1_file_ignores_extra_and_manager_keys(tmp_path: Path) -> None:
    meta = metadata(model_kwargs={"d": {"__type__": "x"}})
    meta[INTERNALS_KEY].update(format_version=1, extra="not an object", manager=[1])
    path = write_checkpoint(tmp_path, None, meta, {}, None)
    with CheckpointReader(path) as reader:
        internals = reader.scan.metadata.internals
        assert internals.extra is None and internals.manager is None
        assert reader.scan.metadata.model_kwargs == {
            "d": {"__type__": "dict", "items": [["__type__", "x"]]}
        }


# ---------------------------------------------------------------------------
# malformed version 2 files: the kind of the first check that fails
# (FORMAT.md section 9 step 16 and 11.6), until the shared corpus holds them


def v2_json(kind: str = "checkpoint", **internals: Any) -> dict[str, Any]:
    """``metadata.json`` of a version 2 file (``format_version`` may be
    changed), with ``internals`` added to ``__pytorch_saver__``."""
    meta = metadata(kind)
    meta[INTERNALS_KEY].update({"format_version": 2, **internals})
    return meta


def write_unchecked(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    meta: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
    version: int = 2,
) -> Path:
    """Writes ``meta`` as it is, past the writer's checks, with a model
    member and ``extra`` as ``extra.safetensors``."""
    lenient = Metadata(
        model_kwargs={},
        timestamp=TIMESTAMP,
        internals=Internals(
            "checkpoint", "m.M", PRODUCER, extra=None if extra is None else (), format_version=2
        ),
    )
    with monkeypatch.context() as m:
        m.setattr(writer, "parse", lambda _: lenient)
        m.setattr(writer, "_check_extra_tensors", lambda *_: None)
        return Path(write_checkpoint(tmp_path, None, meta, {"w": torch.ones(2)}, None, extra))


RNG_STATE = {"cpu": {"__type__": "tensor", "name": "rng.cpu"}}
RNG = {"rng": {"class": "pytorch_saver.RNG", "state": RNG_STATE}}
ONE = {"rng.cpu": torch.ones(3, dtype=torch.uint8)}


def _with(meta: dict[str, Any], **top: Any) -> dict[str, Any]:
    meta.update(top)
    return meta


def _without(meta: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        meta.pop(key, None)
        meta[INTERNALS_KEY].pop(key, None)
    return meta


MALFORMED_V2: list[tuple[str, dict[str, Any], dict[str, torch.Tensor] | None, str, str]] = [
    (
        "weights-in-v1",
        _without(v2_json("weights", format_version=1), "model", "model_kwargs"),
        None,
        "Schema",
        'kind: must be "checkpoint" or "inference"',
    ),
    (
        "weights-with-model",
        v2_json("weights"),
        None,
        "Schema",
        "a weights file names no model class",
    ),
    ("checkpoint-without-model", _without(v2_json(), "model"), None, "Schema", "model: missing"),
    (
        "weights-with-model-kwargs",
        _without(v2_json("weights"), "model"),
        None,
        "Schema",
        "model_kwargs: present in a weights file",
    ),
    (
        "inference-with-extra",
        v2_json("inference", extra=RNG),
        ONE,
        "Schema",
        "an inference file holds no optimizer, scheduler or extra state",
    ),
    (
        "weights-with-optimizer-and-bad-tag",
        _with(
            _without(v2_json("weights", optimizer=ADAM), "model", "model_kwargs"),
            optim_kwargs={"x": {"__type__": "?"}},
        ),
        None,
        "Schema",
        "holds no optimizer",
    ),
    ("extra-not-object", v2_json(extra=[]), None, "Schema", "extra: must be an object"),
    (
        "extra-empty-name",
        v2_json(extra={"": {"class": "c", "state": 1}}),
        ONE,
        "Schema",
        "an entry name is empty",
    ),
    (
        "extra-empty-class",
        v2_json(extra={"rng": {"class": "", "state": 1}}),
        ONE,
        "Schema",
        "extra.rng.class: must be a non-empty string",
    ),
    (
        "extra-no-state",
        v2_json(extra={"rng": {"class": "c"}}),
        ONE,
        "Schema",
        "extra.rng.state: missing",
    ),
    (
        "manager-step",
        v2_json(manager={"id": "a", "step": -1, "metrics": {}}),
        None,
        "Schema",
        "manager.step",
    ),
    (
        "manager-metric-and-bad-tag",
        _with(
            v2_json(manager={"id": "a", "step": 1, "metrics": {"m": "x"}}),
            model_kwargs={"x": {"__type__": "?"}},
        ),
        None,
        "Schema",
        "manager.metrics.m: must be a finite number",
    ),
    (
        "manager-no-id",
        v2_json(manager={"step": 1, "metrics": {}}),
        None,
        "Schema",
        "manager.id: missing",
    ),
    (
        "unknown-tag",
        _with(v2_json(), model_kwargs={"a": [{"__type__": 3}]}),
        None,
        "TypedValue",
        'typed value at model_kwargs.a[0]: "__type__" must be a string naming a type, got 3',
    ),
    (
        "tag-extra-key",
        _with(v2_json(), model_kwargs={"a": {"__type__": "tuple", "items": [], "len": 0}}),
        None,
        "TypedValue",
        '"tuple" tag: has no key "len"',
    ),
    (
        "tag-missing-key",
        _with(v2_json(), model_kwargs={"a": {"__type__": "spec", "class": "a"}}),
        None,
        "TypedValue",
        '"spec" tag: needs the key "kwargs"',
    ),
    (
        "dict-item",
        _with(v2_json(), model_kwargs={"a": {"__type__": "dict", "items": [[1]]}}),
        None,
        "TypedValue",
        'model_kwargs.a.items[0]: "dict" tag: items must be two-element lists',
    ),
    (
        "spec-null-class",
        _with(v2_json(), model_kwargs={"a": {"__type__": "spec", "class": None, "kwargs": {}}}),
        None,
        "TypedValue",
        '"spec" tag: "class" must be a class name, got null',
    ),
    (
        "object-fields",
        _with(
            v2_json(),
            model_kwargs={
                "a": {"__type__": "object", "codec": "dataclass", "class": "a.B", "fields": []}
            },
        ),
        None,
        "TypedValue",
        '"object" tag: "fields" must be an object, got []',
    ),
    (
        "class-name",
        _with(v2_json(), model_kwargs={"a": {"__type__": "class", "name": "a-b"}}),
        None,
        "TypedValue",
        'model_kwargs.a: "class" tag: "name" "a-b" is not a class name',
    ),
    (
        "long-class-name",
        _with(v2_json(), model_kwargs={"a": {"__type__": "class", "name": "a" * 513}}),
        None,
        "TypedValue",
        "(513 bytes) is not a class name",
    ),
    (
        "dtype",
        _with(v2_json(), model_kwargs={"a": {"__type__": "dtype", "name": "float128"}}),
        None,
        "TypedValue",
        '"dtype" tag: name "float128" is not one of',
    ),
    (
        "float",
        _with(v2_json(), model_kwargs={"a": {"__type__": "float", "value": "Infinity"}}),
        None,
        "TypedValue",
        '"float" tag: value "Infinity" is not "inf", "-inf" or "nan"',
    ),
    (
        "callable-in-optim-kwargs",
        _with(v2_json(optimizer=ADAM), optim_kwargs={"f": {"__type__": "callable", "name": "f"}}),
        None,
        "TypedValue",
        'optim_kwargs.f: "callable" tag: may only appear in scheduler_kwargs',
    ),
    (
        "tensor-in-kwargs-before-extra",
        _with(
            v2_json(extra={"rng": {"class": "c", "state": {"__type__": "?"}}}),
            model_kwargs={"t": {"__type__": "tensor", "name": "rng.cpu"}},
        ),
        ONE,
        "TypedValue",
        'model_kwargs.t: "tensor" tag: may only appear in extra state',
    ),
    (
        "shared-tensor",
        v2_json(extra={**RNG, "again": {"class": "c", "state": [RNG_STATE["cpu"]]}}),
        ONE,
        "TypedValue",
        'extra.again.state[0]: "tensor" tag: names tensor "rng.cpu", which the tag at '
        "__pytorch_saver__.extra.rng.state.cpu names too",
    ),
    (
        "typed-value-before-missing-member",
        _with(v2_json(extra=RNG), model_kwargs={"a": {"__type__": "x"}}),
        None,
        "TypedValue",
        "model_kwargs.a",
    ),
    (
        "missing-extra-member",
        v2_json(extra=RNG),
        None,
        "MissingMember",
        "missing member extra.safetensors",
    ),
    (
        "extra-member-without-extra",
        v2_json(),
        ONE,
        "UnexpectedMember",
        '"extra.safetensors (the metadata declares no extra state)"',
    ),
    (
        "extra-member-in-v1",
        v2_json(format_version=1, extra=RNG),
        ONE,
        "UnexpectedMember",
        '"extra.safetensors (a version 1 file has no extra state)"',
    ),
    (
        "untagged-extra-tensor",
        v2_json(extra=RNG),
        {**ONE, "stray": torch.ones(1)},
        "TensorHeader",
        'tensor "stray" is named by no "tensor" tag of the extra state',
    ),
    (
        "tag-without-tensor",
        v2_json(extra=RNG),
        {"other": torch.ones(1)},
        "TensorHeader",
        'tensor "other" is named by no "tensor" tag',
    ),
    (
        "tag-naming-absent-tensor",
        v2_json(
            extra={
                "rng": {
                    "class": "c",
                    "state": [RNG_STATE["cpu"], {"__type__": "tensor", "name": "gone"}],
                }
            }
        ),
        ONE,
        "TensorHeader",
        'the "tensor" tag at __pytorch_saver__.extra.rng.state[1] names tensor "gone", which',
    ),
]


@pytest.mark.parametrize(
    ("meta", "extra", "kind", "message"),
    [case[1:] for case in MALFORMED_V2],
    ids=[case[0] for case in MALFORMED_V2],
)
def test_a_malformed_version_2_file_is_refused_at_the_first_failing_check(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    meta: dict[str, Any],
    extra: dict[str, torch.Tensor] | None,
    kind: str,
    message: str,
) -> None:
    path = write_unchecked(monkeypatch, tmp_path, meta, extra)
    with pytest.raises(FormatError) as info:
        read_checkpoint(path)
    assert (info.value.kind, message in str(info.value)) == (kind, True), str(info.value)


def test_a_well_formed_unchecked_file_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The helper above writes what a reader accepts when nothing is wrong.
    path = write_unchecked(monkeypatch, tmp_path, v2_json(extra=RNG), ONE)
    assert_same_tensors(read_checkpoint(path).extra, ONE)
