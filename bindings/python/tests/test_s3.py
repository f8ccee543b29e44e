"""Checkpoints on object storage (``s3://``), against moto's S3 server on
loopback (``conftest.py``): saves streamed as multipart uploads and
published create-only, loads and restores from one fetched buffer with
every check of a local load, the checkpoint manager on a prefix, and the
errors of bad locations, each a StorageError naming the URL."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import signal
import time
import warnings
from pathlib import Path

import pytest
import s3_children
import torch
from conftest import BUCKET, S3Dir, S3Server, closed_port
from pytorch_saver import (
    CheckpointManager,
    CheckpointSkippedWarning,
    FormatError,
    ManagerLockedError,
    ModelContainer,
    ModelObjects,
    StorageError,
    read_checkpoint,
)
from pytorch_saver._format import multipart
from pytorch_saver.models import MLP
from support import assert_same_objects, batches, train

SPAWN = multiprocessing.get_context("spawn")


def held(c: ModelContainer) -> ModelObjects:
    assert c.model is not None
    return ModelObjects(c.model, c.optim, c.scheduler)


def trained(hidden: int = 8) -> ModelContainer:
    torch.manual_seed(0)
    c = ModelContainer()
    objs = c.initialize(
        MLP,
        {"in_dim": 4, "hidden_dim": hidden, "n_classes": 3},
        torch.optim.Adam,
        {"lr": 1e-2},
        torch.optim.lr_scheduler.StepLR,
        {"step_size": 2, "gamma": 0.5},
    )
    train(objs, batches(3))
    return c


def test_save_load_restore_round_trip(s3: S3Dir) -> None:
    c = trained()
    url = c.save(s3.url + "/run", "exp", epoch=3)
    assert url.startswith(f"{s3.url}/run/exp_checkpoint_") and url.endswith(".zip")
    assert s3.keys() == [s3.key(url)[len(s3.prefix) + 1 :]]

    metadata, objs = ModelContainer().load(url)
    assert metadata["epoch"] == 3
    assert c.model is not None and c.optim is not None and c.scheduler is not None
    assert_same_objects(objs, held(c))

    # Restore into objects that diverged: back to the saved state.
    saved = {k: v.clone() for k, v in c.model.state_dict().items()}
    train(held(c), batches(2))
    assert any(not torch.equal(saved[k], v) for k, v in c.model.state_dict().items())
    assert c.restore(url)["epoch"] == 3
    assert_same_objects(objs, held(c))

    # The same bytes as a local save of the same state.
    checkpoint = read_checkpoint(url)
    assert checkpoint.path == url
    for name, tensor in c.model.state_dict().items():
        assert torch.equal(checkpoint.model[name], tensor), name


def test_a_load_views_its_tensors_into_one_buffer(s3: S3Dir) -> None:
    c = trained(hidden=32)
    url = c.save(s3.url, "views")
    _, objs = ModelContainer().load(url)
    storages = {t.untyped_storage().data_ptr() for t in objs.model.state_dict().values()}
    assert len(storages) == 1
    # Writable (a private buffer), as a mapped local load is.
    weight = next(iter(objs.model.parameters()))
    with torch.no_grad():
        weight.add_(1.0)


def test_save_inference_and_same_second_names(s3: S3Dir, monkeypatch: pytest.MonkeyPatch) -> None:
    c = trained()
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    first = c.save_inference(s3.url, "inf")
    second = c.save_inference(s3.url, "inf")
    assert first == f"{s3.url}/inf_inference_1700000000.zip"
    assert second == f"{s3.url}/inf_inference_1700000000-1.zip"
    assert ModelContainer().load(second)[1].optimizer is None


def test_progress_reports_the_upload(s3: S3Dir, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small parts so that the file spans several, one of them held back
    # until its member's CRC is patched.
    monkeypatch.setattr(multipart, "PART_SIZE", 5 << 20)
    c = trained(hidden=1024)
    calls: list[tuple[int, int]] = []
    c.progress = lambda done, total: calls.append((done, total))
    url = c.save(s3.url, "progress")
    size = s3.client.head_object(Bucket=BUCKET, Key=s3.key(url))["ContentLength"]
    assert size > 2 * (5 << 20)
    assert calls[0] == (0, size) and calls[-1] == (size, size)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:], strict=False))
    _, objs = ModelContainer().load(url)
    assert_same_objects(objs, held(c))


def test_a_progress_callback_that_raises_leaves_no_object(s3: S3Dir) -> None:
    c = trained(hidden=64)

    def progress(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt

    c.progress = progress
    with pytest.raises(KeyboardInterrupt):
        c.save(s3.url, "interrupted")
    assert s3.keys() == []
    uploads = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=s3.prefix + "/")
    assert uploads.get("Uploads", []) == []


def test_two_writers_of_the_same_name_publish_one_object(s3: S3Dir) -> None:
    barrier = SPAWN.Barrier(2)
    results = SPAWN.Queue()
    children = [
        SPAWN.Process(
            target=s3_children.save_at_the_same_second,
            args=(s3.url, 1_700_000_123, barrier, results),
        )
        for _ in range(2)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    name = "race_checkpoint_1700000123.zip"
    url = f"{s3.url}/{name}"
    assert s3.keys() == [name]
    assert sorted(o[0] for o in outcomes) == ["error", "ok"]
    ok = next(o for o in outcomes if o[0] == "ok")
    error = next(o for o in outcomes if o[0] == "error")
    assert ok[1] == url
    assert error[1] == "Storage" and url in error[2] and "another writer" in error[2]
    _, objs = ModelContainer().load(url)
    assert_same_objects(objs, held(s3_children.container(seed=7)))
    uploads = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=s3.prefix + "/")
    assert uploads.get("Uploads", []) == []


def test_a_killed_upload_leaves_no_object(s3: S3Dir) -> None:
    reports = SPAWN.Queue()
    child = SPAWN.Process(target=s3_children.slow_save, args=(s3.url, reports))
    child.start()
    try:
        parts = 0
        while parts == 0:
            assert reports.get(timeout=120) != "finished"
            listed = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=s3.prefix + "/")
            for upload in listed.get("Uploads", []):
                found = s3.client.list_parts(
                    Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                parts += len(found.get("Parts", []))
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    assert s3.keys() == []
    # The upload was under way: parts, never an object.
    listed = s3.client.list_multipart_uploads(Bucket=BUCKET, Prefix=s3.prefix + "/")
    uploads = listed.get("Uploads", [])
    assert len(uploads) == 1 and uploads[0]["Key"].startswith(f"{s3.prefix}/killed_checkpoint_")
    with pytest.raises(StorageError, match="no such object"):
        read_checkpoint(f"s3://{BUCKET}/{uploads[0]['Key']}")
    s3.client.abort_multipart_upload(
        Bucket=BUCKET, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
    )
    try:
        reports.get_nowait()
    except queue.Empty:
        pass


def test_manager_retention_latest_and_skipping_a_corrupt_object(s3: S3Dir) -> None:
    c = trained()
    with CheckpointManager(s3.url, "run", keep_last=2) as mgr:
        paths = [mgr.save(c, step, loss=1.0 / (step + 1)) for step in range(4)]
        assert all(p.startswith(s3.url + "/run_checkpoint_") for p in paths)
        infos = mgr.list()
        assert [i.step for i in infos] == [2, 3]
        assert [i.path for i in infos] == paths[2:]
        latest = mgr.latest()
        assert latest is not None and latest.step == 3 and latest.path == paths[3]
        names = {p.rsplit("/", 1)[1] for p in paths[2:]}
        assert set(s3.keys()) == names | {".run.lock", ".run.manager.json"}

        state = json.loads(
            s3.client.get_object(Bucket=BUCKET, Key=f"{s3.prefix}/.run.manager.json")["Body"].read()
        )
        assert state["id"] == mgr.id and state["pinned"] == []
        lock = json.loads(
            s3.client.get_object(Bucket=BUCKET, Key=f"{s3.prefix}/.run.lock")["Body"].read()
        )
        assert lock["lease_seconds"] == 900 and lock["owner"].split(":")[1] == str(os.getpid())

        # Garbage under the newest checkpoint's name: skipped when resuming.
        s3.client.put_object(Bucket=BUCKET, Key=s3.key(paths[3]), Body=b"not a zip" * 100)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = mgr.load_latest()
        assert loaded is not None
        assert any(
            issubclass(w.category, CheckpointSkippedWarning) and paths[3] in str(w.message)
            for w in caught
        )
        assert_same_objects(loaded[1], held(c))
        with pytest.raises(FormatError):
            ModelContainer().load(paths[3])
    # close() deleted the lock; the state stays, and a new manager resumes the series.
    assert ".run.lock" not in s3.keys()
    with CheckpointManager(s3.url, "run", keep_last=2) as again:
        assert again.id == mgr.id
        pinned = again.list()[0].path
        again.pin(pinned)
        assert again.pinned == [pinned.rsplit("/", 1)[1]]


def test_manager_lock_object(s3: S3Dir) -> None:
    c = trained()
    lock_key = f"{s3.prefix}/.run.lock"
    with CheckpointManager(s3.url, "run", lock_lease_seconds=60) as mgr:
        with pytest.raises(ManagerLockedError) as locked:
            CheckpointManager(s3.url, "run")
        assert f"{s3.url}/.run.lock" in str(locked.value) and mgr.id not in str(locked.value)
        held = json.loads(s3.client.get_object(Bucket=BUCKET, Key=lock_key)["Body"].read())
        assert held["owner"] in str(locked.value) and held["lease_seconds"] == 60
        mgr.save(c, 0)

        # Another manager takes over (as after an expired lease): the lock
        # is lost, and the next save fails before uploading anything.
        before = s3.keys()
        s3.client.put_object(Bucket=BUCKET, Key=lock_key, Body=b'{"owner": "other"}')
        with pytest.raises(ManagerLockedError, match="lost its lock"):
            mgr.save(c, 1)
        assert s3.keys() == before
        s3.client.delete_object(Bucket=BUCKET, Key=lock_key)

    # A stale lock (its lease expired) is taken over.
    stale = {"owner": "gone:1:ab", "timestamp": int(time.time()) - 1000, "lease_seconds": 10}
    s3.client.put_object(Bucket=BUCKET, Key=lock_key, Body=json.dumps(stale).encode())
    with CheckpointManager(s3.url, "run") as mgr:
        held = json.loads(s3.client.get_object(Bucket=BUCKET, Key=lock_key)["Body"].read())
        assert held["owner"] != "gone:1:ab"
        assert mgr.save(c, 2).startswith(s3.url)
    # A live one is not.
    live = {"owner": "alive:1:cd", "timestamp": int(time.time()), "lease_seconds": 3600}
    s3.client.put_object(Bucket=BUCKET, Key=lock_key, Body=json.dumps(live).encode())
    with pytest.raises(ManagerLockedError, match="alive:1:cd"):
        CheckpointManager(s3.url, "run")


def test_a_local_file_url_is_a_path(tmp_path: Path) -> None:
    c = trained()
    path = c.save(f"file://{tmp_path}", "local")
    assert path.startswith(str(tmp_path)) and os.path.isfile(path)
    assert_same_objects(ModelContainer().load(f"file://{path}")[1], held(c))


def test_a_missing_bucket_is_a_storage_error(s3: S3Dir) -> None:
    c = trained()
    url = "s3://no-such-bucket/d"
    with pytest.raises(StorageError, match="no-such-bucket") as e:
        c.save(url, "x")
    assert e.value.kind == "Storage" and "bucket does not exist" in str(e.value)
    with pytest.raises(StorageError, match="s3://no-such-bucket/d/x.zip"):
        ModelContainer().load(f"{url}/x.zip")
    with pytest.raises(StorageError, match="no-such-bucket"):
        CheckpointManager(url, "run")


def test_a_missing_object_is_a_storage_error(s3: S3Dir) -> None:
    url = f"{s3.url}/absent.zip"
    with pytest.raises(StorageError, match=url):
        read_checkpoint(url)
    with pytest.raises(StorageError, match=url):
        trained().restore(url)


def test_wrong_credentials_are_a_storage_error(s3: S3Dir, monkeypatch: pytest.MonkeyPatch) -> None:
    # No --bucket: with --auth the server's own bucket creation is refused
    # too; every request is refused as unknown credentials before the
    # bucket is looked up.
    server = S3Server.start("--auth")
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        url = f"s3://{BUCKET}/d"
        with pytest.raises(StorageError, match="access denied") as e:
            trained().save(url, "x")
        assert url in str(e.value)
        with pytest.raises(StorageError, match="access denied"):
            read_checkpoint(f"{url}/x.zip")
        with pytest.raises(StorageError, match="access denied"):
            CheckpointManager(url, "run")
    finally:
        server.stop()


def test_an_unreachable_endpoint_fails_fast(s3: S3Dir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    url = f"s3://{BUCKET}/d/x.zip"
    with pytest.raises(StorageError, match="cannot reach") as e:
        read_checkpoint(url)
    assert url in str(e.value)
    with pytest.raises(StorageError, match="cannot reach"):
        trained().save(f"s3://{BUCKET}/d", "x")


def test_unknown_schemes_and_urls_without_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="foo://x/y") as e:
        read_checkpoint("foo://x/y")
    assert "unknown scheme 'foo'" in str(e.value)
    with pytest.raises(StorageError, match="foo://x/y"):
        ModelContainer().load("foo://x/y")
    with pytest.raises(StorageError, match="s3:// URLs only"):
        trained().save("foo://x/y", "p")
    with pytest.raises(StorageError, match="no bucket"):
        read_checkpoint("s3:///key.zip")
    # Nothing was written locally by any of them.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("straddle", [0, 2, 4])
def test_a_patch_across_held_parts_is_uploaded_in_place(
    s3: S3Dir, monkeypatch: pytest.MonkeyPatch, straddle: int
) -> None:
    """The sink alone, on the server: a patched range that ends a part
    (``straddle`` 4), crosses into the next one (2) or starts it (0), while
    later parts are uploaded; the object holds the patched bytes in order."""
    from pytorch_saver._storage import parse

    size = 5 << 20
    monkeypatch.setattr(multipart, "PART_SIZE", size)
    directory = parse(s3.url)
    assert not isinstance(directory, str)
    sink = multipart.MultipartSink(directory, f"sink{straddle}", 3 * size)
    data = bytearray(os.urandom(3 * size + 123))
    at = size - straddle
    sink.expect_patch(at, 4)
    for start in range(0, len(data), 1 << 20):
        sink.write(bytes(data[start : start + (1 << 20)]))
    data[at : at + 4] = b"CRC!"
    sink.patch(at, b"CRC!")
    url = sink.publish()
    body = s3.client.get_object(Bucket=BUCKET, Key=s3.key(url))["Body"].read()
    assert body == bytes(data)


def test_other_fsspec_protocols_are_read(tmp_path: Path) -> None:
    """A protocol fsspec implements (its in-memory one here) reads as S3
    does: fetched, checked, loaded; a missing object is a StorageError."""
    import fsspec

    c = trained()
    local = c.save(tmp_path, "mem")
    fs = fsspec.filesystem("memory")
    fs.pipe("/store/run/mem.zip", Path(local).read_bytes())
    try:
        _, objs = ModelContainer().load("memory://store/run/mem.zip")
        assert_same_objects(objs, held(c))
        with pytest.raises(StorageError, match="memory://store/run/absent.zip"):
            read_checkpoint("memory://store/run/absent.zip")
    finally:
        fs.rm("/store", recursive=True)


def test_s3a_urls_are_read_through_s3fs(s3: S3Dir) -> None:
    """s3fs reads the same object, pointed at the endpoint of the
    environment as boto3 is."""
    c = trained()
    url = c.save(s3.url, "s3a")
    _, objs = ModelContainer().load(url.replace("s3://", "s3a://", 1))
    assert_same_objects(objs, held(c))
