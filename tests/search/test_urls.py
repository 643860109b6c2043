"""Storage URLs never show a secret: in printed URLs, in error text, and in every command's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import write_dataset
from postgres import free_port

from ensemble.search.urls import driver_error, hide_secrets, redact

SLASH_PW = "postgresql://al:ab/cdSECRET@{where}"  # a "/" in the password: a regex took "ab" for the host
QUERY_PW = "postgresql://al@{where}?password=s3cretQ"  # the password as a query parameter
SECRETS = ("cdSECRET", "s3cretQ")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (SLASH_PW.format(where="host/db"), "postgresql://al:***@host/db"),
        (QUERY_PW.format(where="host/db"), "postgresql://al@host/db?password=***"),
        ("postgresql://u@h/db?sslpassword=a1&sslmode=require&api_key=b2&Access_Token=c3&secret=d4",
         "postgresql://u@h/db?Access_Token=***&api_key=***&secret=***&sslmode=require&sslpassword=***"),
        ("postgresql+psycopg://u:p%40ss@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql://al:ab?cd@host/db", "postgresql://al:***@host/db"),
        ("postgresql://al:p@ss@host/db", "postgresql://***"),  # a raw "@": ambiguous, only the scheme shows
        ("postgresql://al:s3cret", "postgresql://***"),  # unparsable
        ("https://u:pw@h:notaport/x", "https://***"),
        ("grpc://10.0.0.5:13000", "grpc://10.0.0.5:13000"),
        ("s3://bucket/runs?token=t0k", "s3://bucket/runs?token=***"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("runs/a/optuna.journal", "runs/a/optuna.journal"),
    ],
)  # fmt: skip
def test_redact_hides_every_secret(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_an_error_quoting_the_password_outside_a_url_is_masked() -> None:
    url = SLASH_PW.format(where="db.example/x")
    exc = RuntimeError(f'password "ab/cdSECRET" rejected\nfor {url}\n(Background on this error at: ...)')
    text = driver_error(exc, url)
    assert "cdSECRET" not in text and "ab/cd" not in text and "\n" not in text and "al:***@db.example" in text
    encoded = "ab%2FcdSECRET"  # a driver may echo the URL-encoded form
    assert "cdSECRET" not in hide_secrets(f"dsn password={encoded}", url)
    assert "s3cretQ" not in hide_secrets("dsn: password=s3cretQ user=al", QUERY_PW.format(where="h/d"))
    raw_at = "postgresql://al:p@ss-W0rd@h/db"  # a raw "@": the widest reading of the password is masked
    assert hide_secrets("password p@ss-W0rd rejected", raw_at) == "password *** rejected"


def _ensemble(args: list[str], folder: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENSEMBLE_RUNS": str(folder / "runs"), "PYTHONUNBUFFERED": "1"}
    env.pop("ENSEMBLE_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "ensemble", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _commands(url: str, data: Path) -> list[list[str]]:
    run = ["--run", "r", "--data", str(data), "--storage", url]
    return [
        ["search", *run, "--trials", "1"],
        ["worker", *run],
        ["run", *run, "--restart", "--time-budget", "1m"],
        ["report", *run],
        ["storage-proxy", "--storage", url, "--port", str(free_port())],
    ]


def _check_refused(done: subprocess.CompletedProcess[str]) -> None:
    said = done.stdout + done.stderr
    assert done.returncode == 2, said[-2000:]
    assert not any(s in said for s in SECRETS), said
    assert "Traceback" not in said and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("form", [SLASH_PW, QUERY_PW])
def test_no_command_shows_the_password_of_an_unreachable_server(form: str, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=60, n_test=10)
    url = form.format(where=f"127.0.0.1:{free_port()}/db")
    plain_run = ["run", "--run", "r2", "--data", str(data), "--storage", url, "--time-budget", "1m"]  # prints hints
    for args in [*_commands(url, data), plain_run]:
        done = _ensemble(args, tmp_path)
        _check_refused(done)
        assert "***" in done.stderr or "***" in done.stdout  # the URL is shown, masked


@pytest.mark.parametrize("form", [SLASH_PW, QUERY_PW])
def test_no_command_shows_a_wrong_password(form: str, postgres_url: str, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=60, n_test=10)
    server = urlsplit(postgres_url)
    url = form.format(where=f"{server.hostname}:{server.port}{server.path}").replace("al", server.username or "", 1)
    for args in _commands(url, data):
        _check_refused(_ensemble(args, tmp_path))
