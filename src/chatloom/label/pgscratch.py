"""Scratch PostgreSQL for the labeling app's tests and benchmarks (never for real data): `fresh_pg` empties a database's
public schema, `throwaway_cluster` starts a cluster of its own in a temporary folder (like `.ci/run` does) and removes
it afterwards. One copy, used by `tests/label_live.py` and `bench/label.py`."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def fresh_pg(url: str) -> str:
    """Drop and recreate the public schema of `url` (everything in it is lost); returns `url`."""
    from sqlalchemy import text

    from .db import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def pg_bin() -> str:
    """The newest /usr/lib/postgresql/*/bin that has initdb (Debian's layout), else the folder of initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    path = found[-1] if found else shutil.which("initdb")
    if not path:
        raise RuntimeError("PostgreSQL's initdb was not found (Debian: apt-get install postgresql)")
    return os.path.dirname(path)


@contextmanager
def throwaway_cluster(max_connections: int = 200) -> Iterator[str]:
    """`with throwaway_cluster() as url:` a new PostgreSQL cluster on a free loopback port (trust auth, fsync off), as
    the `postgres` system user when run as root (initdb refuses root); stopped and deleted when the block ends."""
    bindir = pg_bin()
    root = os.geteuid() == 0
    folder = tempfile.mkdtemp(prefix="chatloom-pg-")
    if root:
        shutil.chown(folder, "postgres")

    def run(*cmd: str) -> None:
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd)] if root else list(cmd)
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = os.path.join(folder, "data")
    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres")
    options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
               f"-c max_connections={max_connections}")
    run(f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", os.path.join(folder, "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        try:
            run(f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
