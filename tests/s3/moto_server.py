"""An S3 API server for the test suites of every language: moto's server on
a loopback port, started and stopped by the test that needs it.

    python tests/s3/moto_server.py [--bucket NAME]... [--auth]

prints one JSON line, {"endpoint": "http://127.0.0.1:PORT"}, once the
server answers, then serves until its standard input reaches end of file:
a test holds the pipe open, so the server ends with the test that started
it, also when that test is killed. Clients point at it with the standard
AWS environment variables (see ``client_env``).

``--auth`` enforces request signatures against moto's IAM, where no user
exists: every request, however signed, is refused as the real service
refuses unknown credentials. Without it moto accepts any signature.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# The keys every client in the tests signs with; any value passes without --auth.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def client_env(endpoint: str) -> dict[str, str]:
    """The standard AWS environment variables that point a client at the server."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--bucket", action="append", default=[], help="create this bucket (repeatable)"
    )
    parser.add_argument(
        "--auth", action="store_true", help="refuse every request as unauthenticated"
    )
    args = parser.parse_args()
    if args.auth:
        # Read by moto when it is imported: no request passes unauthenticated.
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    # Credentials for moto's own backend calls below; never real ones.
    os.environ.update(
        {k: v for k, v in client_env("http://unused").items() if k != "AWS_ENDPOINT_URL"}
    )

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    if args.bucket:
        import boto3

        s3 = boto3.client("s3", **_boto_args(endpoint))
        for bucket in args.bucket:
            s3.create_bucket(Bucket=bucket)
    print(json.dumps({"endpoint": endpoint}), flush=True)
    try:
        while sys.stdin.buffer.read(1 << 16):
            pass
    finally:
        server.stop()


def _boto_args(endpoint: str) -> dict[str, str]:
    return {
        "endpoint_url": endpoint,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "region_name": REGION,
    }


if __name__ == "__main__":
    main()
