"""Real processes for the integration and fault tests: Celery workers, `medqa serve`, and private Redis
and PostgreSQL servers on spare ports (the fault suite kills and restarts those, never the machine's
shared ones at 6379 and 5432)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

MEDQA = str(Path(sys.executable).with_name("medqa"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def first_row(model, **where):  # type: ignore[no-untyped-def]
    """The first stored row of `model` with the given column values (None if there is none)."""
    from sqlmodel import select

    from shared.db import session_scope

    with session_scope() as s:
        stmt = select(model)
        for name, value in where.items():
            stmt = stmt.where(getattr(model, name) == value)
        return s.exec(stmt).first()


def count_rows(model, *where) -> int:  # type: ignore[no-untyped-def]
    """How many stored rows of `model` match the SQL conditions `where`."""
    from sqlmodel import func, select

    from shared.db import session_scope

    with session_scope() as s:
        return s.exec(select(func.count()).select_from(model).where(*where)).one()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """A child outlives a killed test run otherwise, and then takes later runs' messages off the
    shared test broker (seen here: a stray train worker starved the next run's loop)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env or os.environ.copy(),
                            start_new_session=True, preexec_fn=_die_with_parent)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (a warm shutdown), SIGKILL if it has not ended after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Worker:
    """`medqa worker QUEUES` with the test's environment (settings are read from MEDQA_ variables)."""

    def __init__(self, log: Path, queues: str = "all") -> None:
        self.log = log
        self.proc = _spawn([MEDQA, "worker", queues], log)
        wait_for("worker ready", lambda: b"ready." in log.read_bytes() or self.proc.poll() is not None, 90)
        assert self.proc.poll() is None, log.read_text()[-3000:]

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # main process and pool children, no warm shutdown
        self.proc.wait(10)

    def stop(self) -> None:
        stop(self.proc)


class ApiServer:
    """`medqa serve` on a spare port; `url` is its base URL once /healthz answers."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = _spawn([MEDQA, "serve", "--host", "127.0.0.1", "--port", str(self.port)], log)
        wait_for("the API", self._up, 120)
        assert self.proc.poll() is None, log.read_text()[-3000:]

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            return True
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop(self.proc)


class RedisServer:
    """A private redis-server that keeps nothing on disk, as the machine's does: a restart loses every
    message, which is the fault under test."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = free_port(), workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = _spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", str(self.workdir)], self.workdir / "redis.log")
        wait_for("redis", self._ping, 20, every=0.1)

    def _ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.exceptions.ConnectionError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class PostgresServer:
    """A private PostgreSQL cluster (trust auth) in a temporary folder, on a spare port. initdb refuses
    to run as root, so as root the cluster belongs to the `postgres` user."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="medqa-pg-"))
        self.data = self.root / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(PG_BIN / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash as far as clients can tell: connections cut, no clean shutdown."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # stopped already
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
