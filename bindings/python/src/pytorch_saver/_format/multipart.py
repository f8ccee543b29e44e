"""The writer's sink for object storage: the checkpoint streamed as an S3
multipart upload with bounded memory, published create-only.

The writer hands its bytes over in order, and patches each tensor member's
CRC-32 into that member's local header once the member is written. Bytes
are cut into parts of :data:`PART_SIZE` (larger for a file that would need
more than :data:`MAX_PARTS`), each uploaded as soon as it is full, except
one that holds a CRC field still to be patched: it is held back in memory,
under its part number, and uploaded once patched, while the parts after it
go on. Every part but the last is full, hence at least S3's 5 MiB minimum.
Memory: at most the part being filled and one held part.

The upload's name is the first of ``{stem}.zip``, ``{stem}-1.zip``, ...
that a HEAD finds free; the upload is completed with ``If-None-Match: *``,
so that an object another writer published under that name meanwhile is
never replaced (:class:`StorageError`). On any failure, the upload is
aborted: no object appears under the final name.
"""

from __future__ import annotations

from typing import Any, Final

from .._errors import StorageError
from .._storage import ObjectURL, is_not_found, is_precondition_failed, s3_client, translate

__all__ = ["MAX_PARTS", "PART_SIZE", "MultipartSink"]

PART_SIZE: Final = 16 << 20
MAX_PARTS: Final = 9_000
"""S3 allows 10,000 parts; parts grow past :data:`PART_SIZE` to stay below."""
_CHECKSUM_KEYS: Final = (
    "ChecksumCRC32",
    "ChecksumCRC32C",
    "ChecksumCRC64NVME",
    "ChecksumSHA1",
    "ChecksumSHA256",
)


class _Part:
    __slots__ = ("data", "number", "start")

    def __init__(self, number: int, start: int) -> None:
        self.number = number
        self.start = start
        self.data = bytearray()

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class MultipartSink:
    """Takes the writer's bytes (``write``), the ranges it will patch
    (``expect_patch``) and the patches (``patch``); ``publish`` completes
    the upload and returns the URL, ``discard`` aborts it, ``withdraw``
    deletes a published object (a progress callback that raised last)."""

    def __init__(self, directory: ObjectURL, stem: str, total: int) -> None:
        if directory.scheme != "s3":
            raise StorageError(
                f"{directory.url}: saving to object storage supports s3:// URLs only "
                f"(not {directory.scheme}://)"
            )
        self._client = s3_client(directory.url)
        self._bucket = directory.bucket
        self._part_size = max(PART_SIZE, -(-total // MAX_PARTS))
        self._target = self._free_name(directory, stem)
        self.url = self._target.url
        with translate(self.url, self._client):
            created = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._target.key
            )
        self._upload_id: str | None = str(created["UploadId"])
        self._current = _Part(1, 0)
        self._held: list[_Part] = []
        self._pending: list[tuple[int, int]] = []
        self._done: list[dict[str, Any]] = []
        self._published = False

    def _free_name(self, directory: ObjectURL, stem: str) -> ObjectURL:
        for n in range(10_000):
            target = directory.child(f"{stem}.zip" if n == 0 else f"{stem}-{n}.zip")
            with translate(target.url, self._client):
                try:
                    self._client.head_object(Bucket=self._bucket, Key=target.key)
                except Exception as e:
                    if is_not_found(e):
                        return target
                    raise
        raise StorageError(f"{directory.url}: 10000 objects named {stem}-N.zip already exist")

    # -- the writer's side -----------------------------------------------------

    def expect_patch(self, offset: int, length: int) -> None:
        """Bytes ``offset..offset+length`` will be patched: the part that
        holds them is held back until they are."""
        self._pending.append((offset, offset + length))

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            part = self._current
            take = min(len(view), self._part_size - len(part.data))
            part.data += view[:take]
            view = view[take:]
            if len(part.data) == self._part_size:
                self._current = _Part(part.number + 1, part.end)
                if self._blocked(part):
                    self._held.append(part)
                else:
                    self._upload(part)
        return total

    def patch(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        for part in [*self._held, self._current]:
            lo, hi = max(offset, part.start), min(end, part.end)
            if lo < hi:
                part.data[lo - part.start : hi - part.start] = data[lo - offset : hi - offset]
        self._pending = [r for r in self._pending if not (r[0] >= offset and r[1] <= end)]
        for part in [p for p in self._held if not self._blocked(p)]:
            self._held.remove(part)
            self._upload(part)

    def _blocked(self, part: _Part) -> bool:
        return any(lo < part.end and hi > part.start for lo, hi in self._pending)

    def _upload(self, part: _Part) -> None:
        assert self._upload_id is not None
        with translate(self.url, self._client):
            response = self._client.upload_part(
                Bucket=self._bucket,
                Key=self._target.key,
                UploadId=self._upload_id,
                PartNumber=part.number,
                Body=bytes(part.data),
            )
        done: dict[str, Any] = {"PartNumber": part.number, "ETag": response["ETag"]}
        done.update({k: response[k] for k in _CHECKSUM_KEYS if response.get(k)})
        self._done.append(done)
        part.data = bytearray()

    # -- publishing --------------------------------------------------------------

    def publish(self) -> str:
        """Uploads the last part and completes the upload, create-only."""
        assert not self._pending and not self._held, "a CRC field was never patched"
        assert self._upload_id is not None
        if self._current.data or not self._done:
            self._upload(self._current)
        parts = sorted(self._done, key=lambda p: int(p["PartNumber"]))
        with translate(self.url, self._client):
            try:
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._target.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )
            except Exception as e:
                if is_precondition_failed(e):
                    raise StorageError(
                        f"{self.url}: another writer published an object under this name "
                        "first; nothing was replaced (save again for the next free name)"
                    ) from None
                raise
        self._upload_id = None
        self._published = True
        return self.url

    def discard(self) -> None:
        """Aborts the upload (after a failure): no object appears."""
        upload_id, self._upload_id = self._upload_id, None
        self._held.clear()
        self._current.data = bytearray()
        if upload_id is None:
            return
        try:
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._target.key, UploadId=upload_id
            )
        except Exception:
            # The error that made us abort is the one to report; an upload
            # left behind is never visible as an object, and a bucket's
            # lifecycle rule (AbortIncompleteMultipartUpload) reclaims it.
            pass

    def withdraw(self) -> None:
        """Deletes the object just published."""
        if self._published:
            with translate(self.url, self._client):
                self._client.delete_object(Bucket=self._bucket, Key=self._target.key)
            self._published = False

    def settle(self) -> None:
        """Nothing to make durable: a completed upload is."""
