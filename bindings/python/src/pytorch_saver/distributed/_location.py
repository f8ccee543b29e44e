"""Where a sharded checkpoint lives (docs/FORMAT.md 13): a local directory
or an object-store prefix, and the few operations the sharded reader and
writer need there: the index, read or committed create-only, and the
shard files' paths and sizes."""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any

from .._errors import FormatError, StorageError
from .._format.publish import fsync_directory, publish_file
from .._storage import (
    ObjectURL,
    _fsspec_filesystem,
    is_not_found,
    is_precondition_failed,
    parse,
    s3_client,
    translate,
)
from ._index import INDEX_NAME

__all__ = ["Location"]


class Location:
    """A sharded checkpoint's location, given as the location itself or as
    the path or URL of its ``index.json``."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        parsed = parse(location)
        if isinstance(parsed, ObjectURL):
            key = parsed.key.rstrip("/")
            if key == INDEX_NAME or key.endswith("/" + INDEX_NAME):
                key = key[: -len(INDEX_NAME)].rstrip("/")
            self.url: ObjectURL | None = ObjectURL(parsed.scheme, parsed.bucket, key)
            self.path = ""
            self.text = self.url.url
        else:
            path = parsed
            if os.path.basename(path) == INDEX_NAME:
                path = os.path.dirname(path) or "."
            self.url = None
            self.path = path
            self.text = path

    def __str__(self) -> str:
        return self.text

    @property
    def directory(self) -> str:
        """The location as the writers take a directory: a path or a URL."""
        return self.text

    def join(self, name: str) -> str:
        """The path or URL of the file ``name`` in the location."""
        if self.url is not None:
            return self.url.child(name).url
        return os.path.join(self.path, name)

    def _s3(self) -> tuple[Any, ObjectURL]:
        assert self.url is not None
        if self.url.scheme not in ("s3", "s3a"):
            raise StorageError(
                f"{self.url.url}: the Python package writes sharded checkpoints to s3:// only"
            )
        return s3_client(self.url.url), self.url

    def read_index(self) -> bytes:
        """The index's bytes; :class:`FormatError` of kind ``NotCommitted``
        when there is none."""
        missing = FormatError(
            f"{self.text}: no {INDEX_NAME}: no sharded checkpoint was committed there (a save "
            "that did not finish leaves shard files without an index)",
            kind="NotCommitted",
        )
        if self.url is not None:
            target = self.url.child(INDEX_NAME)
            if self.url.scheme in ("s3", "s3a"):
                client = s3_client(target.url)
                with translate(target.url, client):
                    try:
                        response = client.get_object(Bucket=target.bucket, Key=target.key)
                    except Exception as e:
                        if is_not_found(e):
                            raise missing from None
                        raise
                    return bytes(response["Body"].read())
            fs = _fsspec_filesystem(target)
            with translate(target.url):
                try:
                    return bytes(fs.cat_file(f"{target.bucket}/{target.key}"))
                except FileNotFoundError:
                    raise missing from None
        try:
            with open(os.path.join(self.path, INDEX_NAME), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise missing from None

    def size(self, name: str) -> int | None:
        """The size of the file ``name`` in the location; None when it
        does not exist."""
        if self.url is None:
            try:
                return os.stat(os.path.join(self.path, name)).st_size
            except FileNotFoundError:
                return None
        target = self.url.child(name)
        if self.url.scheme in ("s3", "s3a"):
            client = s3_client(target.url)
            with translate(target.url, client):
                try:
                    head = client.head_object(Bucket=target.bucket, Key=target.key)
                except Exception as e:
                    if is_not_found(e):
                        return None
                    raise
            return int(head["ContentLength"])
        fs = _fsspec_filesystem(target)
        with translate(target.url):
            try:
                return int(fs.size(f"{target.bucket}/{target.key}"))
            except FileNotFoundError:
                return None

    def prepare(self) -> None:
        """Creates a local location (with its parents) when missing; an
        object-store prefix needs nothing."""
        if self.url is None:
            os.makedirs(self.path, exist_ok=True)

    def check_uncommitted(self) -> None:
        """:class:`FormatError` of kind ``InvalidInput`` when the location
        already holds a committed checkpoint: a location holds one, never
        overwritten."""
        if self.url is not None:
            self._s3()  # this package writes to s3:// only: say so before anything
        exists = self.size(INDEX_NAME) is not None
        if exists:
            raise FormatError(
                f"{self.join(INDEX_NAME)} exists: {self.text} holds a committed checkpoint, which "
                "is never overwritten; save to a new location",
                kind="InvalidInput",
            )

    def commit_index(self, data: bytes) -> None:
        """Writes ``index.json`` create-only (FORMAT.md 13.4 step 3)."""
        target = self.join(INDEX_NAME)
        if self.url is not None:
            client, url = self._s3()
            obj = url.child(INDEX_NAME)
            with translate(obj.url, client):
                try:
                    client.put_object(Bucket=obj.bucket, Key=obj.key, Body=data, IfNoneMatch="*")
                except Exception as e:
                    if is_precondition_failed(e):
                        raise StorageError(
                            f"{obj.url} exists: another save committed this location first"
                        ) from None
                    raise
            return
        tmp = os.path.join(self.path, f".{INDEX_NAME}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                publish_file(tmp, target)
            except FileExistsError:
                raise FormatError(
                    f"{target} exists: another save committed this location first",
                    kind="InvalidInput",
                ) from None
            fsync_directory(self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
