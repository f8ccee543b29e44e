"""Where a checkpoint manager keeps its series (FORMAT.md 12.1): a local
directory, or a prefix on object storage (``s3://bucket/prefix``). The
manager (``_manager.py``) does the same through either; only these
operations differ.

On object storage the layout is the directory's, with two changes that
every language's manager implements alike:

- ``D/.P.manager.json`` is created with ``put_object(If-None-Match: *)``
  (when that fails with 412, the existing one is read); later changes
  (pins) are plain PUTs by the lock holder;
- ``D/.P.lock`` is an object holding UTF-8 JSON ``{"owner":
  "<hostname>:<pid>:<uuid4 hex>", "timestamp": <int unix seconds when
  written>, "lease_seconds": <int>}``, created with ``If-None-Match: *``. A
  lock whose ``timestamp + lease_seconds`` is past is stale and taken over
  with ``If-Match: <its ETag>``; otherwise the manager is locked. The
  holder rewrites it (new timestamp, ``If-Match: <its last ETag>``) before
  every save, which fails before uploading when that is refused (the lock
  was lost); ``close`` deletes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Final

from ._errors import InvalidArgumentError, ManagerLockedError, StorageError
from ._format.publish import fsync_directory
from ._storage import (
    ObjectURL,
    is_not_found,
    is_precondition_failed,
    s3_client,
    translate,
)

__all__ = ["DEFAULT_LEASE_SECONDS", "LocalStore", "ObjectStore", "SeriesStore"]

DEFAULT_LEASE_SECONDS: Final = 900


class LocalStore:
    """A directory: the lock is an exclusive ``flock`` of ``D/.P.lock``, the
    state file is replaced atomically (rename), deletions are fsynced."""

    def __init__(self, directory: str, prefix: str) -> None:
        self.directory = directory
        self._prefix = prefix
        self._lock_fd = -1
        os.makedirs(directory, exist_ok=True)

    @property
    def lock_name(self) -> str:
        return os.path.join(self.directory, f".{self._prefix}.lock")

    @property
    def state_name(self) -> str:
        return os.path.join(self.directory, f".{self._prefix}.manager.json")

    @property
    def locked(self) -> bool:
        return self._lock_fd >= 0

    def join(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def take_lock(self) -> None:
        fd = os.open(self.lock_name, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ManagerLockedError(
                f"another checkpoint manager holds the lock of directory {self.directory!r}, "
                f"prefix {self._prefix!r} ({self.lock_name}), in this process or another; "
                "close it first"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def refresh_lock(self) -> None:
        """A ``flock`` lasts as long as the process: nothing to renew."""

    def release_lock(self) -> None:
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            os.close(fd)  # releases the flock

    def read_state(self) -> bytes | None:
        try:
            with open(self.state_name, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def create_state(self, data: bytes) -> bool:
        """Writes the first state (the lock holder alone writes it)."""
        self.write_state(data)
        return True

    def write_state(self, data: bytes) -> None:
        """Replaces the state file atomically: a temporary file, fsynced,
        renamed over it, the directory fsynced."""
        path = self.state_name
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        fsync_directory(self.directory)

    def check_exists(self) -> None:
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(
                f"the checkpoint directory {self.directory!r} no longer exists; the manager "
                "does not create it again"
            )

    def names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.directory))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the checkpoint directory {self.directory!r} no longer exists"
            ) from None

    def delete(self, name: str) -> bool:
        try:
            os.unlink(os.path.join(self.directory, name))
        except FileNotFoundError:
            return False
        return True

    def deleted(self) -> None:
        fsync_directory(self.directory)

    def series_name(self, given: str) -> str:
        name = os.path.basename(given)
        parent = os.path.dirname(given)
        if parent and not os.path.samefile(parent, self.directory):
            raise InvalidArgumentError(f"{given} is not in the directory {self.directory!r}")
        return name


class ObjectStore:
    """A prefix on S3 (module docstring): conditional writes stand in for
    ``flock`` and ``rename``."""

    def __init__(self, directory: ObjectURL, prefix: str, lease_seconds: int) -> None:
        if directory.scheme != "s3":
            raise StorageError(
                f"{directory.url}: a checkpoint manager on object storage supports s3:// URLs "
                f"only (not {directory.scheme}://)"
            )
        self._url = directory
        self.directory = directory.url.rstrip("/")
        self._prefix = prefix
        self._lease = lease_seconds
        self._client = s3_client(directory.url)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._lock_etag: str | None = None
        self._lock = directory.child(f".{prefix}.lock")
        self._state = directory.child(f".{prefix}.manager.json")

    @property
    def lock_name(self) -> str:
        return self._lock.url

    @property
    def state_name(self) -> str:
        return self._state.url

    @property
    def locked(self) -> bool:
        return self._lock_etag is not None

    def join(self, name: str) -> str:
        return self._url.child(name).url

    def _lock_body(self) -> bytes:
        body = {"owner": self._owner, "timestamp": int(time.time()), "lease_seconds": self._lease}
        return json.dumps(body).encode("utf-8")

    def _put(self, target: ObjectURL, data: bytes, **condition: str) -> str | None:
        """PUTs ``data``; its ETag, or None when the condition failed (412)."""
        with translate(target.url, self._client):
            try:
                response = self._client.put_object(
                    Bucket=target.bucket, Key=target.key, Body=data, **condition
                )
            except Exception as e:
                # If-Match on an object that is gone: 404 on some stores.
                if is_precondition_failed(e) or ("IfMatch" in condition and is_not_found(e)):
                    return None
                raise
        return str(response["ETag"])

    def _locked(self, why: str) -> ManagerLockedError:
        return ManagerLockedError(
            f"another checkpoint manager holds the lock {self._lock.url} ({why}); close it "
            "first, or wait for its lease to expire"
        )

    def take_lock(self) -> None:
        etag = self._put(self._lock, self._lock_body(), IfNoneMatch="*")
        if etag is None:
            with translate(self._lock.url, self._client):
                try:
                    found = self._client.get_object(Bucket=self._lock.bucket, Key=self._lock.key)
                except Exception as e:
                    if is_not_found(e):  # released meanwhile: try once more
                        found = None
                    else:
                        raise
                if found is None:
                    etag = self._put(self._lock, self._lock_body(), IfNoneMatch="*")
                    if etag is None:
                        raise self._locked("taken while this manager opened")
                else:
                    raw = found["Body"].read()
                    held = _parse_lock(raw)
                    if held is None:
                        raise self._locked("its content is not a lock this package reads")
                    owner, stamp, lease = held
                    if stamp + lease >= int(time.time()):
                        raise self._locked(
                            f"owner {owner}, written at {stamp}, lease {lease} seconds"
                        )
                    etag = self._put(self._lock, self._lock_body(), IfMatch=str(found["ETag"]))
                    if etag is None:
                        raise self._locked(
                            f"the stale lock of {owner} was taken over by another manager first"
                        )
        self._lock_etag = etag

    def refresh_lock(self) -> None:
        if self._lock_etag is None:
            raise self._locked("this manager does not hold it")
        etag = self._put(self._lock, self._lock_body(), IfMatch=self._lock_etag)
        if etag is None:
            self._lock_etag = None
            raise ManagerLockedError(
                f"this checkpoint manager lost its lock {self._lock.url}: another manager took "
                "it over (the lease expired); nothing was saved"
            )
        self._lock_etag = etag

    def release_lock(self) -> None:
        if self._lock_etag is None:
            return
        self._lock_etag = None
        with translate(self._lock.url, self._client):
            self._client.delete_object(Bucket=self._lock.bucket, Key=self._lock.key)

    def read_state(self) -> bytes | None:
        with translate(self._state.url, self._client):
            try:
                found = self._client.get_object(Bucket=self._state.bucket, Key=self._state.key)
            except Exception as e:
                if is_not_found(e):
                    return None
                raise
            return bytes(found["Body"].read())

    def create_state(self, data: bytes) -> bool:
        """Creates the state create-only; False when it exists already."""
        return self._put(self._state, data, IfNoneMatch="*") is not None

    def write_state(self, data: bytes) -> None:
        self._put(self._state, data)

    def check_exists(self) -> None:
        """A prefix always exists; a missing bucket fails the upload."""

    def names(self) -> list[str]:
        """The names of the objects right under the prefix (final objects
        only: an upload in progress is not listed)."""
        base = self._url.dir_prefix
        names: list[str] = []
        with translate(self.directory, self._client):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self._url.bucket, Prefix=base, Delimiter="/"):
                for item in page.get("Contents", []):
                    names.append(str(item["Key"])[len(base) :])
        return sorted(names)

    def delete(self, name: str) -> bool:
        target = self._url.child(name)
        with translate(target.url, self._client):
            self._client.delete_object(Bucket=target.bucket, Key=target.key)
        return True

    def deleted(self) -> None:
        """A deletion is durable when it returns."""

    def series_name(self, given: str) -> str:
        parent, _, name = given.rstrip("/").rpartition("/")
        if parent != self.directory:
            raise InvalidArgumentError(f"{given} is not in {self.directory}")
        return name


def _parse_lock(raw: bytes) -> tuple[str, int, int] | None:
    try:
        body: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    owner, stamp, lease = body.get("owner"), body.get("timestamp"), body.get("lease_seconds")
    if not isinstance(owner, str) or not isinstance(stamp, int) or not isinstance(lease, int):
        return None
    return owner, stamp, lease


SeriesStore = LocalStore | ObjectStore
