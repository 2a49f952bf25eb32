"""A real S3-compatible HTTP server for tests: moto's standalone server (`python -m moto.server`) on
127.0.0.1 in a process of its own, which s3fs talks to over HTTP exactly as to MinIO. moto stays out
of the test process (importing it there would hook botocore for every other test)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from procs import free_port

# Any credentials do for moto; the secret is a recognisable needle for the redaction checks.
ACCESS_KEY = "medqa-test-key"
SECRET_KEY = "hunter2-s3-secret"
REGION = "eu-west-1"  # s3fs sends it as the new bucket's location, which us-east-1 may not be


@contextlib.contextmanager
def moto_server(start_timeout_s: float = 60.0) -> Iterator[str]:
    """Start moto's S3 server; yields its endpoint URL and stops the process it started."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"moto server did not start: {log.read()[-2000:].decode(errors='replace')}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def s3_storage_options(endpoint: str) -> dict[str, Any]:
    """What shared.artifacts.s3_options gives s3fs for these settings."""
    return {"endpoint_url": endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY,
            "client_kwargs": {"region_name": REGION}, "use_listings_cache": False}


def s3_settings(endpoint: str, url: str) -> dict[str, str]:
    """The same as MEDQA_ settings overrides."""
    return {"artifact_url": url, "s3_endpoint_url": endpoint, "s3_region": REGION,
            "s3_access_key_id": ACCESS_KEY, "s3_secret_access_key": SECRET_KEY}


def s3fs_client(endpoint: str) -> Any:
    """A plain s3fs filesystem on the server, for making buckets and tampering with objects."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **s3_storage_options(endpoint))
