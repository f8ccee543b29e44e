"""``pytorch_saver.convert`` and ``python -m pytorch_saver convert``: files
made by the real tools (torch.save, safetensors, transformers'
save_pretrained, the original package) converted and loaded back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
import torchvision
import transformers
from pytorch_saver import (
    ClassResolutionError,
    FormatError,
    InvalidArgumentError,
    ModelContainer,
    ModelObjects,
    TypedValueError,
    UnsafePickleError,
    convert,
    read_checkpoint,
)
from pytorch_saver.__main__ import main
from pytorch_saver._typed_kwargs import Decoder
from support import MODEL_KWARGS, Model, assert_same_objects, batches, train
from test_upgrade import legacy_file
from torch.optim.lr_scheduler import StepLR
from torchvision.models.resnet import BasicBlock, ResNet

TESTS = Path(__file__).resolve().parent
RESNET_KWARGS: dict[str, Any] = {"block": BasicBlock, "layers": [2, 2, 2, 2], "num_classes": 10}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    return subprocess.run(
        [sys.executable, "-m", "pytorch_saver", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def trained_dict(path: Path) -> tuple[Path, ModelObjects]:
    """A training dict as scripts save one: Adam after 3 steps, StepLR."""
    torch.manual_seed(0)
    model = Model(**MODEL_KWARGS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    objs = ModelObjects(model, opt, StepLR(opt, step_size=2))
    train(objs, batches(3))
    assert objs.scheduler is not None
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": objs.scheduler.state_dict(),
            "epoch": 3,
            "loss": 0.5,
        },
        path,
    )
    return path, objs


# ---------------------------------------------------------------------------
# torch.save


def test_a_torchvision_state_dict_becomes_a_checkpoint_with_identical_outputs(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    src = tmp_path / "resnet.pt"
    torch.save(model.state_dict(), src)
    out = convert(src, tmp_path / "resnet.zip", model_class=ResNet, model_kwargs=RESNET_KWARGS)
    assert out == str(tmp_path / "resnet.zip")
    metadata, objs = ModelContainer().load(out)
    assert metadata["model_kwargs"] == RESNET_KWARGS
    assert objs.optimizer is None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(objs.model.eval()(x), model(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet.pt", "resnet.zip"]


def test_a_training_dict_becomes_a_checkpoint_that_resumes(tmp_path: Path) -> None:
    src, objs = trained_dict(tmp_path / "train.pt")
    calls: list[tuple[int, int]] = []
    out = convert(
        src,
        tmp_path / "ckpt.zip",
        model_class=Model,
        model_kwargs=MODEL_KWARGS,
        optim_class=torch.optim.Adam,
        optim_kwargs={"lr": 1e-2, "betas": (0.8, 0.9)},
        scheduler_class=StepLR,
        scheduler_kwargs={"step_size": 2},
        progress=lambda done, total: calls.append((done, total)),
    )
    metadata, loaded = ModelContainer().load(out)
    assert_same_objects(objs, loaded)
    assert metadata["epoch"] == 3 and metadata["loss"] == 0.5
    # The state is the one the training dict held: training on goes alike.
    data = batches(5)[3:]
    train(objs, data)
    train(loaded, data)
    assert_same_objects(objs, loaded)
    total = calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total) and total > 0
    assert all(a[0] < b[0] and a[1] == b[1] for a, b in zip(calls, calls[1:], strict=False))


def test_optimizer_state_without_its_class_is_refused(tmp_path: Path) -> None:
    src, _ = trained_dict(tmp_path / "train.pt")
    with pytest.raises(InvalidArgumentError, match=r"optimizer state.*optim_class \(--optimizer\)"):
        convert(src, tmp_path / "a.zip", model_class=Model, model_kwargs=MODEL_KWARGS)
    with pytest.raises(InvalidArgumentError, match=r"scheduler state.*scheduler_class"):
        convert(
            src,
            tmp_path / "b.zip",
            model_class=Model,
            model_kwargs=MODEL_KWARGS,
            optim_class=torch.optim.Adam,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.pt"]
    # The model alone is what --inference asks for.
    out = convert(
        src, tmp_path / "m.zip", model_class=Model, model_kwargs=MODEL_KWARGS, inference=True
    )
    assert read_checkpoint(out).metadata["__pytorch_saver__"]["kind"] == "inference"


def test_a_training_dict_with_an_object_is_refused_naming_its_key(tmp_path: Path) -> None:
    src = tmp_path / "x.pt"
    torch.save({"model": Model(**MODEL_KWARGS).state_dict(), "ema": torch.ones(3)}, src)
    with pytest.raises(ValueError, match="'ema' holds a Tensor"):
        convert(src, tmp_path / "x.zip", model_class=Model, model_kwargs=MODEL_KWARGS)


class Evil:
    """Pickles as a call of os.system."""

    def __init__(self, canary: Path) -> None:
        self.command = f"touch {canary}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def evil_file(tmp_path: Path) -> tuple[Path, Path]:
    canary = tmp_path / "CANARY"
    src = tmp_path / "evil.pt"
    torch.save({"model": Model(**MODEL_KWARGS).state_dict(), "x": Evil(canary)}, src)
    return src, canary


def test_a_pickle_that_would_run_code_is_refused_before_anything_runs(tmp_path: Path) -> None:
    src, canary = evil_file(tmp_path)
    with pytest.raises(UnsafePickleError, match=r"posix\.system") as info:
        convert(src, tmp_path / "out.zip", model_class=Model, model_kwargs=MODEL_KWARGS)
    assert "not allowed" in str(info.value)
    assert not canary.exists()
    assert not (tmp_path / "out.zip").exists()
    result = run_cli("convert", str(src), str(tmp_path / "out.zip"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "posix.system" in result.stderr
    assert not canary.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_the_evil_payload_is_live(tmp_path: Path) -> None:
    """torch.load without weights_only would run it: the test above is real."""
    src, canary = evil_file(tmp_path)
    torch.load(src, weights_only=False)
    assert canary.exists()


# ---------------------------------------------------------------------------
# safetensors


def test_safetensors_round_trip_through_a_weights_file(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(5, 7, generator=gen),
        "h": torch.randn(3, generator=gen).half(),
        "b": torch.randn(2, 2, generator=gen).bfloat16(),
        "d": torch.randn(4, generator=gen).double(),
        "i": torch.randint(-100, 100, (6,), generator=gen),
        "m": torch.rand(3, generator=gen) > 0.5,
        "u": torch.randint(0, 255, (2, 3), generator=gen).to(torch.uint8),
        "s": torch.tensor(1.5),
        "e": torch.empty(0, 3),
    }
    src = tmp_path / "in.safetensors"
    safetensors.torch.save_file(tensors, src, metadata={"origin": "test"})
    weights = convert(src, tmp_path / "w.zip")
    ckpt = read_checkpoint(weights)
    assert ckpt.metadata["__pytorch_saver__"]["kind"] == "weights"
    assert ckpt.metadata["origin"] == "test"
    with pytest.raises(ClassResolutionError, match="weights file: it names no class"):
        ModelContainer().load(weights)
    back = convert(weights, tmp_path / "out.safetensors", to="safetensors")
    loaded = safetensors.torch.load_file(back)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        got, want = loaded[name].reshape(-1), tensor.reshape(-1)
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name


# ---------------------------------------------------------------------------
# Hugging Face


def tiny_bert() -> transformers.BertModel:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=16,
    )
    return transformers.BertModel(config).eval()


def test_a_sharded_hugging_face_directory_converts_and_back(tmp_path: Path) -> None:
    bert = tiny_bert()
    src = tmp_path / "bert"
    bert.save_pretrained(src, max_shard_size="40KB")
    shards = sorted(p.name for p in src.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (src / "model.safetensors.index.json").is_file()

    out = convert(src, tmp_path / "bert.zip")
    metadata, objs = ModelContainer().load(out)
    assert type(objs.model) is transformers.BertModel
    assert metadata["model_kwargs"]["config"].hidden_size == 32
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = bert(input_ids=ids).last_hidden_state
        got = objs.model.eval()(input_ids=ids).last_hidden_state
    assert torch.equal(got, want)

    hf = tmp_path / "bert-out"
    convert(out, hf, to="hf", max_shard_size=40_000)
    assert len(list(hf.glob("model-*-of-*.safetensors"))) >= 2
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(bert.state_dict())
    again = transformers.BertModel.from_pretrained(hf).eval()
    want_state, got_state = bert.state_dict(), again.state_dict()
    assert want_state.keys() == got_state.keys()
    for name, tensor in want_state.items():
        assert torch.equal(got_state[name], tensor), name
    assert not list(tmp_path.glob(".*"))


def test_a_hugging_face_output_directory_must_not_exist(tmp_path: Path) -> None:
    bert = tiny_bert()
    bert.save_pretrained(tmp_path / "bert")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        convert(tmp_path / "bert", tmp_path / "taken", to="hf")
    assert list((tmp_path / "taken").iterdir()) == []
    convert(tmp_path / "bert", tmp_path / "single", to="hf")
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert safetensors.safe_open(tmp_path / "single" / "model.safetensors", "pt").metadata() == {
        "format": "pt"
    }


def test_an_hf_config_without_a_class_decodes_by_model_type() -> None:
    config = tiny_bert().config
    tag = {"__type__": "object", "codec": "hf_config", "class": None, "fields": config.to_dict()}
    decoded = Decoder().kwargs({"config": tag}, "model_kwargs")["config"]
    assert type(decoded) is transformers.BertConfig
    assert decoded.to_dict() == config.to_dict()
    del tag["fields"]["model_type"]
    with pytest.raises(TypedValueError, match="model_type"):
        Decoder().kwargs({"config": tag}, "model_kwargs")


def test_an_hf_config_without_a_class_needs_transformers(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from pytorch_saver import TypedValueError\n"
        "from pytorch_saver._typed_kwargs import Decoder\n"
        "tag = {'__type__': 'object', 'codec': 'hf_config', 'class': None,\n"
        "       'fields': {'model_type': 'bert'}}\n"
        "try:\n"
        "    Decoder().kwargs({'config': tag}, 'model_kwargs')\n"
        "except TypedValueError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert "transformers cannot be imported" in result.stdout


# ---------------------------------------------------------------------------
# 0.1.x files, this format, the command line


def test_a_file_of_the_original_package_converts(tmp_path: Path) -> None:
    old, objs = legacy_file(tmp_path)
    out = convert(
        old,
        tmp_path / "new.zip",
        model_class=Model,
        optim_class=torch.optim.Adam,
        scheduler_class=StepLR,
    )
    metadata, loaded = ModelContainer().load(out)
    assert_same_objects(objs, loaded)
    assert metadata["loss"] == 0.5 and metadata["dataset"] == "fake"
    assert metadata["optim_kwargs"] == {"lr": 1e-2, "betas": (0.8, 0.9)}


def test_an_existing_output_is_never_replaced(tmp_path: Path) -> None:
    src, _ = trained_dict(tmp_path / "train.pt")
    out = tmp_path / "taken.zip"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        convert(src, out, model_class=Model, model_kwargs=MODEL_KWARGS, inference=True)
    assert out.read_bytes() == b"keep"
    with pytest.raises(InvalidArgumentError, match=r"\.zip"):
        convert(src, tmp_path / "x.pt2", model_class=Model, inference=True)


def test_the_convert_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, objs = trained_dict(tmp_path / "train.pt")
    out = tmp_path / "cli.zip"
    status = main(
        [
            "convert",
            "--model",
            "support.Model",
            "--model-kwargs",
            json.dumps(MODEL_KWARGS),
            str(src),
            "--optimizer",
            "torch.optim.Adam",
            "--optim-kwargs",
            '{"lr": 0.01, "betas": {"__type__": "tuple", "items": [0.8, 0.9]}}',
            str(out),
            "--scheduler",
            "torch.optim.lr_scheduler.StepLR",
            "--scheduler-kwargs",
            '{"step_size": 2}',
        ]
    )
    assert status == 0
    assert capsys.readouterr().out.strip() == str(out)
    metadata, loaded = ModelContainer().load(out)
    assert_same_objects(objs, loaded)
    assert metadata["optim_kwargs"] == {"lr": 0.01, "betas": (0.8, 0.9)}

    model = torchvision.models.resnet18(num_classes=10)
    torch.save(model.state_dict(), tmp_path / "r.pt")
    kwargs = {
        "block": {"__type__": "class", "name": "torchvision.models.resnet.BasicBlock"},
        "layers": [2, 2, 2, 2],
        "num_classes": 10,
    }
    result = run_cli(
        "convert",
        "r.pt",
        "r.zip",
        "--model",
        "torchvision.models.resnet.ResNet",
        "--model-kwargs",
        json.dumps(kwargs),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert ModelContainer().load(tmp_path / "r.zip")[0]["model_kwargs"] == RESNET_KWARGS

    result = run_cli("convert", "train.pt", "x.zip", "--model", "support.Model", cwd=tmp_path)
    assert result.returncode == 1
    assert "--optimizer" in result.stderr and len(result.stderr.splitlines()) == 1


def rewritten_archive(src: Path, dst: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of a torch.save archive with members replaced (None: removed)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in change:
                data = change[info.filename]
                if data is not None:
                    zout.writestr(info.filename, data)
            else:
                zout.writestr(info.filename, zin.read(info))
    return dst


def test_malformed_torch_archives_are_refused_naming_the_fault(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(4), "b": torch.zeros(2)}, src)
    short = rewritten_archive(src, tmp_path / "short.pt", {"m/data/0": b"\0" * 8})
    with pytest.raises(FormatError, match=r"storage '0' of 4 .* needs 16 bytes.*holds 8") as info:
        convert(short, tmp_path / "a.zip")
    assert info.value.kind == "InvalidForeign"
    gone = rewritten_archive(src, tmp_path / "gone.pt", {"m/data/1": None})
    with pytest.raises(FormatError, match="storage '1' has no member m/data/1"):
        convert(gone, tmp_path / "b.zip")
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="outside a ZIP archive"):
        convert(legacy, tmp_path / "c.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gone.pt",
        "legacy.pt",
        "m.pt",
        "short.pt",
    ]
    # The intact file: a state dict without a class is a weights file.
    ckpt = read_checkpoint(convert(src, tmp_path / "ok.zip"))
    assert ckpt.metadata["__pytorch_saver__"]["kind"] == "weights"
    assert torch.equal(ckpt.model["w"], torch.ones(4))
