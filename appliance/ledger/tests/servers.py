"""Real servers for the tests: a private PostgreSQL and a TLS etcd cluster on loopback."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres() -> dict[str, object]:
    """initdb and postgres refuse to run as root; run them as the package's postgres user."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid}


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL 15 on a private Unix socket; yields its connection URL."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError("PostgreSQL 15 is not installed (apt-get install postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    owner = _as_postgres()
    if owner:
        os.chown(root, int(owner["user"]), int(owner["group"]))  # type: ignore[call-overload]
        os.chown(sock, int(owner["user"]), int(owner["group"]))  # type: ignore[call-overload]
    run = dict(check=True, capture_output=True, **owner)
    subprocess.run([PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "ledger"], **run)  # type: ignore[call-overload]
    port = free_port()
    proc = subprocess.Popen(  # type: ignore[call-overload]
        [
            PG_BIN / "postgres",
            "-D",
            data,
            "-k",
            sock,
            "-p",
            str(port),
            "-c",
            "listen_addresses=",
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **owner,
    )
    url = f"postgresql://ledger@/postgres?host={sock}&port={port}"
    try:
        deadline = time.monotonic() + 30
        while not (sock / f".s.PGSQL.{port}").exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
