"""Fixtures shared by the test files: the S3 server (moto, on loopback)
that the object storage tests run against."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MOTO_SERVER = Path(__file__).resolve().parents[3] / "tests" / "s3" / "moto_server.py"
BUCKET = "ckpt"
"""The bucket every S3 test writes to, each under a prefix of its own."""


@dataclass
class S3Server:
    """A running ``tests/s3/moto_server.py``: stopped by closing its stdin."""

    endpoint: str
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, *args: str) -> S3Server:
        process = subprocess.Popen(
            [sys.executable, str(MOTO_SERVER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.kill()
            process.stdout.close()
            raise RuntimeError(f"{MOTO_SERVER} exited before it served ({process.wait()})")
        return cls(json.loads(line)["endpoint"], process)

    def env(self) -> dict[str, str]:
        sys.path.insert(0, str(MOTO_SERVER.parent))
        try:
            from moto_server import client_env
        finally:
            sys.path.remove(str(MOTO_SERVER.parent))
        env: dict[str, str] = client_env(self.endpoint)
        return env

    def stop(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.stdout.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3 server for the session, with the bucket :data:`BUCKET`; the
    standard AWS environment variables point every client (this process's
    and its children's) at it while the session runs."""
    server = S3Server.start("--bucket", BUCKET)
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, request: pytest.FixtureRequest) -> Iterator[S3Dir]:
    """A fresh prefix of the bucket for one test, and a boto3 client to
    look at it with; environment changes by the test are undone."""
    import boto3

    prefix = f"t/{request.node.name.replace('[', '_').replace(']', '_')}"
    client = boto3.client("s3", endpoint_url=s3_server.endpoint)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        yield S3Dir(client, prefix)


@dataclass
class S3Dir:
    client: Any
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"

    def keys(self) -> list[str]:
        """The names of the objects under the prefix (uploads in progress
        are not objects)."""
        response = self.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{self.prefix}/")
        return sorted(o["Key"][len(self.prefix) + 1 :] for o in response.get("Contents", []))

    def key(self, url: str) -> str:
        assert url.startswith(f"s3://{BUCKET}/"), url
        return url[len(f"s3://{BUCKET}/") :]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
