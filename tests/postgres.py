"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder, loopback only, a random port.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user (``runuser``).
The server requires a password (scram-sha-256), so a URL's password is really used.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USER, PASSWORD, DB = "ensemble", "s3cret-pw", "ensemble_test"
_DATA: dict[str, Path] = {}  # each running server's URL -> its data folder (for restart)


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield ``postgresql://USER:PASSWORD@127.0.0.1:PORT/DB``; stop it and delete its files."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="ensemble-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    (root / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        for p in (sock, root / "pw"):
            shutil.chown(p, "postgres")
    port = free_port()
    run = lambda cmd: subprocess.run(_as_owner(cmd), check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    try:
        run([initdb, "-D", str(data), "-U", USER, "--pwfile", str(root / "pw"), "-A", "scram-sha-256", "-E", "UTF8"])
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=200"
        run([pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start"])
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        createdb = find_bin("createdb") or "createdb"
        subprocess.run(
            [createdb, "-h", "127.0.0.1", "-p", str(port), "-U", USER, DB], check=True, env=env, capture_output=True
        )
        url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DB}"
        _DATA[url] = data
        yield url
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_owner([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def restart(url: str) -> None:
    """``pg_ctl restart -m fast`` the server at ``url``: every connection is cut, the server comes back on its port."""
    data = _DATA[url]
    cmd = [find_bin("pg_ctl") or "pg_ctl", "-D", str(data), "-m", "fast", "-l", str(data.parent / "log"), "-w"]
    subprocess.run(_as_owner([*cmd, "-t", "60", "restart"]), check=True, capture_output=True, timeout=120)
