"""Where a checkpoint lives: a local path or an object storage URL.

This module alone parses locations and talks to object storage; the
writer, the reader and the checkpoint manager ask it.

- A plain path, or a ``file://`` URL, is local.
- ``s3://bucket/key`` is read (ranged GETs), written (multipart uploads)
  and managed through boto3.
- Any other ``scheme://`` that fsspec knows (``gs://``, ``az://``,
  ``s3a://`` through s3fs, ..., with the package that implements it
  installed) is read through fsspec; saving there is refused.

Object storage needs the ``s3`` extra (``pip install 'pytorch-saver[s3]'``:
fsspec, s3fs, boto3), imported only when a URL is used. Clients are
configured by the standard AWS environment variables (``AWS_ENDPOINT_URL``,
``AWS_REGION`` or ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, profiles), with at most 3
attempts per request (botocore's "standard" retry mode), a 5 second connect
timeout and a 60 second read timeout: an endpoint that does not answer fails
in seconds, never hangs. Every failure is a :class:`StorageError` naming the
URL.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import torch

from ._errors import StorageError

__all__ = [
    "ObjectURL",
    "RangeReader",
    "fetch",
    "is_precondition_failed",
    "normalize",
    "parse",
    "s3_client",
    "translate",
]

CONNECT_TIMEOUT: Final = 5
READ_TIMEOUT: Final = 60
MAX_ATTEMPTS: Final = 3
FETCH_RANGE: Final = 8 << 20
"""A whole-object fetch reads ranges of this many bytes ..."""
FETCH_CONCURRENCY: Final = 8
"""... with at most this many requests at a time."""
_BLOCK: Final = 64 << 10
"""A metadata-only read fetches aligned blocks of this size, cached."""

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_EXTRA_HINT = "install the extra: pip install 'pytorch-saver[s3]'"


@dataclass(frozen=True)
class ObjectURL:
    """An object (or a "directory": a key prefix) on object storage."""

    scheme: str
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    def __str__(self) -> str:
        return self.url

    def child(self, name: str) -> ObjectURL:
        """The object ``name`` in this directory."""
        key = self.key.rstrip("/")
        return ObjectURL(self.scheme, self.bucket, f"{key}/{name}" if key else name)

    @property
    def dir_prefix(self) -> str:
        """The key prefix of the objects in this directory."""
        key = self.key.rstrip("/")
        return f"{key}/" if key else ""


def parse(location: str | os.PathLike[str]) -> str | ObjectURL:
    """A local path (``file://`` URLs become paths) or an object URL.
    :class:`StorageError` for a URL without a bucket."""
    text = os.fspath(location)
    match = _SCHEME.fullmatch(text)
    if match is None:
        return text
    scheme = match[1].lower()
    rest = match[2]
    if scheme == "file":
        parsed = urllib.parse.urlsplit(text)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{text}: a file:// URL names a local path, not the host")
        return urllib.parse.unquote(parsed.path)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{text}: the URL names no bucket ({scheme}://BUCKET/KEY)")
    return ObjectURL(scheme, bucket, key)


def normalize(location: str | os.PathLike[str]) -> str:
    """The location as a string: a local path, or the URL as given."""
    parsed = parse(location)
    return parsed if isinstance(parsed, str) else os.fspath(location)


def _require(module: str, url: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise StorageError(
            f"{url}: object storage needs the package {module!r}: {_EXTRA_HINT}"
        ) from None


_clients: dict[tuple[object, ...], Any] = {}
_clients_lock = threading.Lock()
_ENV_KEYS: Final = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)


def _config() -> Any:
    from botocore.config import Config

    return Config(
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_pool_connections=FETCH_CONCURRENCY * 2,
    )


def s3_client(url: str) -> Any:
    """A boto3 S3 client configured by the environment (module docstring),
    shared by the threads of a process; a new one when the environment
    changed or the process forked."""
    boto3 = _require("boto3", url)
    env = tuple(os.environ.get(k) for k in _ENV_KEYS)
    cache_key = (os.getpid(), *env)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            try:
                client = boto3.session.Session().client("s3", config=_config())
            except Exception as e:  # botocore: no region, a malformed endpoint
                raise StorageError(f"{url}: cannot configure an S3 client: {e}") from None
            _clients.clear()
            _clients[cache_key] = client
        return client


def _endpoint(client: Any) -> str:
    try:
        return str(client.meta.endpoint_url)
    except AttributeError:
        return "the endpoint"


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for another error)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    error = response.get("Error", {})
    code = error.get("Code", "") if isinstance(error, dict) else ""
    return str(code)


def is_precondition_failed(exc: BaseException) -> bool:
    """A conditional request (``If-None-Match``, ``If-Match``) refused: 412."""
    response = getattr(exc, "response", None)
    status = None
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in ("PreconditionFailed", "412") or status == 412


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in ("NoSuchKey", "404", "NotFound")


def describe(exc: BaseException, url: str, endpoint: str = "the endpoint") -> str:
    """What went wrong, in words, for a botocore or fsspec error."""
    code = error_code(exc)
    if code == "NoSuchBucket":
        return f"{url}: the bucket does not exist"
    if code in ("NoSuchKey", "404", "NotFound"):
        return f"{url}: no such object (or the bucket does not exist)"
    if code in (
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403",
        "ExpiredToken",
        "InvalidToken",
    ):
        return f"{url}: access denied ({code}): check the credentials (AWS_ACCESS_KEY_ID, ...)"
    if code:
        return f"{url}: the storage refused the request ({code}): {exc}"
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return f"{url}: cannot reach {endpoint} ({exc})"
    if name in ("ReadTimeoutError",):
        return f"{url}: {endpoint} did not answer in time ({exc})"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return f"{url}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ({exc})"
    if isinstance(exc, FileNotFoundError):
        return f"{url}: no such object ({exc})"
    if isinstance(exc, PermissionError):
        return f"{url}: access denied ({exc})"
    return f"{url}: {name}: {exc}"


@contextmanager
def translate(url: str, client: Any = None) -> Iterator[None]:
    """Turns a botocore (or fsspec) error of the block into a
    :class:`StorageError` naming ``url``; other errors pass."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        module = type(e).__module__ or ""
        ours = module.startswith(("botocore", "boto3", "s3fs", "fsspec", "aiohttp", "urllib3"))
        if not ours and not isinstance(e, OSError):
            raise
        endpoint = _endpoint(client) if client is not None else "the endpoint"
        raise StorageError(describe(e, url, endpoint)) from None


# -- reading ---------------------------------------------------------------------


def _fsspec_filesystem(url: ObjectURL) -> Any:
    fsspec = _require("fsspec", url.url)
    try:
        cls = fsspec.get_filesystem_class(url.scheme)
    except ValueError:
        raise StorageError(
            f"{url.url}: unknown scheme {url.scheme!r}: give a local path, s3://BUCKET/KEY or "
            "a URL of a protocol fsspec knows"
        ) from None
    except ImportError as e:
        raise StorageError(
            f"{url.url}: the scheme {url.scheme!r} needs a package that is not installed: {e}"
        ) from None
    kwargs: dict[str, Any] = {}
    if url.scheme in ("s3a", "s3n"):
        # s3fs, configured as the boto3 client is: the endpoint of the
        # environment (older s3fs versions do not read AWS_ENDPOINT_URL)
        # and the same retries and timeouts.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs["client_kwargs"] = {"endpoint_url": endpoint} if endpoint else {}
        kwargs["config_kwargs"] = {
            "retries": {"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
        }
    with translate(url.url):
        return cls(**kwargs)


class _Source:
    """Ranged reads of one object (s3 through boto3, others through fsspec),
    pinned to the version first seen (its ETag) where the store has one."""

    def __init__(self, url: ObjectURL) -> None:
        self.url = url
        self._client: Any = None
        self._fs: Any = None
        self._etag: str | None = None
        if url.scheme == "s3":
            self._client = s3_client(url.url)
            if not url.key or url.key.endswith("/"):
                raise StorageError(f"{url.url}: names no object (the key is empty or a prefix)")
            with translate(url.url, self._client):
                head = self._client.head_object(Bucket=url.bucket, Key=url.key)
            self.size = int(head["ContentLength"])
            self._etag = head.get("ETag")
        else:
            self._fs = _fsspec_filesystem(url)
            self._path = f"{url.bucket}/{url.key}"
            with translate(url.url):
                self.size = int(self._fs.size(self._path))

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (``end`` exclusive, within the object)."""
        if end <= start:
            return b""
        if self._client is not None:
            args: dict[str, Any] = {
                "Bucket": self.url.bucket,
                "Key": self.url.key,
                "Range": f"bytes={start}-{end - 1}",
            }
            if self._etag:
                args["IfMatch"] = self._etag
            with translate(self.url.url, self._client):
                try:
                    response = self._client.get_object(**args)
                except Exception as e:
                    if is_precondition_failed(e):
                        raise StorageError(
                            f"{self.url.url}: the object changed while it was read; read it again"
                        ) from None
                    raise
                data = bytes(response["Body"].read())
        else:
            with translate(self.url.url):
                data = bytes(self._fs.cat_file(self._path, start=start, end=end))
        if len(data) != end - start:
            raise StorageError(
                f"{self.url.url}: asked for bytes {start}..{end}, got {len(data)} bytes "
                "(the object changed while it was read?)"
            )
        return data


def fetch(url: ObjectURL, writable: Callable[[torch.Tensor], memoryview]) -> torch.Tensor:
    """The whole object in one CPU uint8 tensor, read with parallel ranged
    requests (at most :data:`FETCH_CONCURRENCY` at a time, ranges of
    :data:`FETCH_RANGE` bytes). ``writable`` views the tensor's bytes."""
    source = _Source(url)
    buffer = torch.empty(source.size, dtype=torch.uint8)
    if source.size == 0:
        return buffer
    view = writable(buffer)

    def read_range(start: int) -> None:
        end = min(start + FETCH_RANGE, source.size)
        view[start:end] = source.read(start, end)

    starts = range(0, source.size, FETCH_RANGE)
    if len(starts) == 1:
        read_range(0)
        return buffer
    with ThreadPoolExecutor(max_workers=FETCH_CONCURRENCY) as pool:
        for future in [pool.submit(read_range, s) for s in starts]:
            future.result()
    return buffer


class RangeReader:
    """Reads of an object by aligned blocks, each fetched once: what a
    metadata-only scan (the end records, the central directory, the local
    headers, ``metadata.json`` and the safetensors headers) needs, in a
    few requests."""

    def __init__(self, url: ObjectURL) -> None:
        self._source = _Source(url)
        self.size = self._source.size
        self._blocks: dict[int, bytes] = {}

    def read(self, start: int, length: int) -> bytes:
        end = min(start + length, self.size)
        if end <= start:
            return b""
        first, last = start // _BLOCK, (end - 1) // _BLOCK
        missing = [b for b in range(first, last + 1) if b not in self._blocks]
        if missing:
            # One request for the run of missing blocks.
            lo, hi = missing[0] * _BLOCK, min((missing[-1] + 1) * _BLOCK, self.size)
            data = self._source.read(lo, hi)
            for b in missing:
                at = b * _BLOCK - lo
                self._blocks[b] = data[at : at + _BLOCK]
        joined = b"".join(self._blocks[b] for b in range(first, last + 1))
        at = start - first * _BLOCK
        return joined[at : at + end - start]
