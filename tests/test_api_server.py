"""The API as `medqa serve` runs it (uvicorn in its own process): limits that only a real server has."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from apikit import API_ENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthz(port: int, timeout: float) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
        return int(r.status)


@pytest.mark.slow
def test_an_oversized_header_is_refused_before_it_is_read_whole(medqa_env):
    """Before: a 96 MB Authorization header was read whole and stalled /healthz for 10 s."""
    medqa_env(**API_ENV, api_max_header_bytes="16384")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", "from services.cli import main; main()", "serve",
                               "--port", str(port)], env=dict(os.environ), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if _healthz(port, 2) == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 8_000_000
            sent = 0
            try:
                while sent < len(request):
                    sent += conn.send(request[sent:sent + 65536])
            except OSError:  # the server stopped reading and closed: what we want
                pass
            assert sent < len(request), "the server read 8 MB of one header"
            try:
                reply = conn.recv(4096)
            except OSError:
                reply = b""
            assert reply == b"" or reply.split(b" ")[1] in (b"400", b"413", b"431")
        t0 = time.monotonic()
        assert _healthz(port, 5) == 200 and time.monotonic() - t0 < 5
    finally:
        server.terminate()
        server.wait(timeout=30)
