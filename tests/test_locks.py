"""OS locks: one writer per run, worker tokens that die with their process, locked read-modify-write."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ensemble.cli import main
from ensemble.errors import UsageError
from ensemble.locks import live_tokens, own_token, run_lock, token_alive, worker_token
from ensemble.pipeline.state import Stages

HOLD = """
import sys, time
from pathlib import Path
from ensemble.locks import run_lock, worker_token
with run_lock(Path(sys.argv[1]), sys.argv[2]):
    print(worker_token(Path(sys.argv[1]) / sys.argv[2]), flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(runs_env: Path):
    """A live process holding run 'r''s writer lock and a worker token on it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(runs_env), "r"], stdout=subprocess.PIPE, text=True)
    token = proc.stdout.readline().strip()
    assert token, "the lock holder did not start"
    yield proc, token
    proc.kill()
    proc.wait()


def test_second_writer_is_refused_with_pid_and_host(holder, runs_env: Path, capsys) -> None:
    proc, _ = holder
    with pytest.raises(UsageError, match=rf"run r is in use by pid {proc.pid} on \S+"):
        with run_lock(runs_env, "r"):
            pass
    for command in (["run", "--run", "r"], ["build", "--run", "r"], ["report", "--run", "r"]):
        (runs_env / "r").mkdir(exist_ok=True)
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: run r is in use by pid {proc.pid} on {os.uname().nodename}"
    assert not (runs_env / "r" / "run.json").exists()  # refused before anything was written


def test_lock_dies_with_its_process(holder, runs_env: Path) -> None:
    proc, token = holder
    run_root = runs_env / "r"
    assert token_alive(run_root, token) and token in live_tokens(run_root)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(runs_env, "r"):  # free at once: the kernel dropped the dead process's lock
        with run_lock(runs_env, "r"):  # re-entrant within one process
            pass
    assert not token_alive(run_root, token)
    assert token not in live_tokens(run_root) and not (run_root / ".workers" / f"{token}.lock").exists()


def test_a_reused_pid_does_not_keep_a_dead_token_alive(runs_env: Path) -> None:
    root = runs_env / "r"
    mine = worker_token(root)
    dead = mine.rsplit("-", 1)[0] + "-deadbeef"  # this very (live) pid, but another token
    (root / ".workers" / f"{dead}.lock").touch()
    assert token_alive(root, mine) and not token_alive(root, dead)
    assert token_alive(root, "some-other-host-1-abcd")  # other machines' workers are left alone


def test_a_liveness_check_between_creating_and_locking_a_token_keeps_it(
    runs_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's liveness check runs between worker_token's open and its flock: the token survives."""
    import fcntl

    root = runs_env / "r"
    real_flock, checked = fcntl.flock, []

    def flock_after_a_check(fd: int, op: int) -> None:
        if not checked:  # the first lock worker_token takes: a concurrent check gets in just before it
            checked.append(sorted(p.name for p in (root / ".workers").iterdir()))
            live_tokens(root)  # opens every TOKEN.lock it sees; one it can lock is a dead worker's, unlinked
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_check)
    token = worker_token(root)
    assert len(checked) == 1 and len(checked[0]) == 1  # the check ran, the token's file already created
    assert [p.name for p in (root / ".workers").iterdir()] == [f"{token}.lock"]
    assert token_alive(root, token) and live_tokens(root) == [token]
    assert own_token(root) == token


def test_the_run_lock_is_re_entered_through_any_spelling_of_the_runs_folder(tmp_path: Path) -> None:
    real = tmp_path / "real-runs"
    real.mkdir()  # without .locks yet: the first lock creates it
    link = tmp_path / "link-runs"
    link.symlink_to(real, target_is_directory=True)
    with run_lock(link, "r"):
        with run_lock(real, "r"):  # the same lock file, spelled through the link's target
            with run_lock(tmp_path / "." / "link-runs", "r"):
                pass
        other = subprocess.run([sys.executable, "-c", HOLD, str(real), "r"], capture_output=True, text=True)
        assert other.returncode != 0 and f"run r is in use by pid {os.getpid()}" in other.stderr
    with run_lock(real, "r"):  # released when the outermost one ended
        pass


def test_a_worker_token_is_one_per_run_however_its_folder_is_spelled(tmp_path: Path) -> None:
    (tmp_path / "real-runs").mkdir()
    link = tmp_path / "link-runs"
    link.symlink_to(tmp_path / "real-runs", target_is_directory=True)
    token = worker_token(link / "r")
    assert worker_token(tmp_path / "real-runs" / "r") == token and live_tokens(tmp_path / "real-runs" / "r") == [token]


STAGES_WRITER = """
import sys
from pathlib import Path
from ensemble.pipeline.run import Stages
stages = Stages(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    stages.note(**{f"{sys.argv[2]}-{i}": i})
"""


def test_stages_updates_from_two_processes_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "stages.json"
    procs = [subprocess.Popen([sys.executable, "-c", STAGES_WRITER, str(path), who, "60"]) for who in ("a", "b")]
    assert [p.wait() for p in procs] == [0, 0]
    data = json.loads(path.read_text())
    assert {f"{w}-{i}" for w in "ab" for i in range(60)} <= set(data)
    stages = Stages(path)
    stages.finish("data", 1.0)
    assert stages.done("data") and Stages(path).done("data")


def test_trainer_child_dies_with_its_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import multiprocessing as mp, os, sys, time
        from ensemble.search.cnn.trainer import die_with_parent

        def child(parent):
            die_with_parent(parent)
            time.sleep(120)

        if __name__ == "__main__":
            p = mp.get_context("spawn").Process(target=child, args=(os.getpid(),), daemon=True)
            p.start()
            print(p.pid, flush=True)
            time.sleep(120)
        """
    )
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.5)  # let the child arm its parent-death signal
    parent.kill()
    parent.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the trainer child outlived its parent")


def test_a_token_left_half_made_by_a_killed_process_is_swept_once_old(runs_env: Path) -> None:
    from ensemble.locks import UNBORN_AGE_S, sweep_unborn_tokens

    root = runs_env / "r"
    folder = root / ".workers"
    folder.mkdir(parents=True)
    old, young, held = folder / ".h-1-aa.new", folder / ".h-2-bb.new", folder / ".h-3-cc.new"
    for p in (old, young, held):
        p.touch()
    past = time.time() - UNBORN_AGE_S - 5
    os.utime(old, (past, past))
    os.utime(held, (past, past))
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # its maker is alive (between its lock and its rename)
    try:
        assert sweep_unborn_tokens(root) == [old]
    finally:
        os.close(fd)
    assert not old.exists() and young.exists() and held.exists()
