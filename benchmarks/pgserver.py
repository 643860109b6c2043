"""A throwaway PostgreSQL server for ``benchmarks/chaos.py``, one that can be restarted mid-run.

The recipe of ``tests/postgres.py`` (its helpers are imported from there): initdb in a temporary
folder (as the ``postgres`` user when run as root), loopback only, a random port, a password.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from postgres import DB, PASSWORD, USER, _as_owner, find_bin, free_port  # tests/postgres.py


class Server:
    """One server: ``url`` to connect, ``restart()`` as ``pg_ctl restart -m fast`` does it."""

    def __init__(self, root: Path) -> None:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise SystemExit("--storage postgres: PostgreSQL binaries (initdb, pg_ctl) not found")
        self.initdb, self.pg_ctl, self.root = initdb, pg_ctl, root
        self.data, self.port = root / "data", free_port()
        self.url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DB}"

    def _run(self, *args: str) -> None:
        subprocess.run(_as_owner(list(args)), check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        sock, pw = self.root / "sock", self.root / "pw"
        sock.mkdir()
        pw.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            for p in (self.root, sock, pw):
                shutil.chown(p, "postgres")
        self._run(
            self.initdb, "-D", str(self.data), "-U", USER, "--pwfile", str(pw), "-A", "scram-sha-256", "-E", "UTF8"
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sock} -c fsync=off -c max_connections=200"
        self._run(
            self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60", "start"
        )
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        createdb = [find_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DB]
        subprocess.run(createdb, check=True, env=env, capture_output=True, timeout=60)

    def restart(self) -> float:
        """``pg_ctl restart -m fast`` (every session is cut; the server keeps its options); the seconds it took."""
        t0 = time.time()
        log = str(self.root / "log")  # without -l the server would hold our stdout pipe open
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-l", log, "-w", "-t", "60", "restart")
        return time.time() - t0

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as_owner([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"]), capture_output=True
            )


@contextmanager
def postgres_server() -> Iterator[Server]:
    """Start a server in a temporary folder; stop it and delete its files at the end."""
    server = Server(Path(tempfile.mkdtemp(prefix="ensemble-chaos-pg-")))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
