"""The fault-injection benchmark, tiny: two SIGKILLs of ``ensemble run`` and every invariant still holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from ensemble.report.submission import check_submission

pytestmark = pytest.mark.slow  # end to end: run with -m slow (CI runs both)

pytest.importorskip("keras")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CHAOS = BENCHMARKS / "chaos.py"


@pytest.fixture(scope="module")
def chaos_modules() -> object:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import chaos
        import chaos_checks
        import chaos_faults

        yield chaos, chaos_checks, chaos_faults
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def two_kills(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("chaos") / "work"
    cmd = [sys.executable, str(CHAOS), "--tiny", "--kills", "2", "--no-reference", "--workdir", str(work)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return work, out.stdout


def test_two_kills_lose_nothing(two_kills: tuple[Path, str]) -> None:
    work, stdout = two_kills
    assert "  kill: 2 of 2 (" in stdout and "[FAIL]" not in stdout
    assert "[PASS] the submission is the final model's" in stdout
    root = work / "runs" / "chaos"
    assert len(check_submission(root / "submission.csv", n_rows=100)) == 100  # the slice's 100 test digits
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(root / "optuna.journal")))
    cnn = optuna.load_study(study_name="cnn", storage=storage)
    states = [t.state for t in cnn.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4  # --cnn-trials 4: killed trials did not count
    stages = json.loads((root / "stages.json").read_text())["stages"]
    assert all(stages[s]["done"] for s in ("data", "cnn_search", "baselines", "build", "report"))


def test_a_submission_that_is_not_the_final_models_is_caught(two_kills: tuple[Path, str], chaos_modules) -> None:
    _, checks, _ = chaos_modules
    work, _ = two_kills
    root = work / "runs" / "chaos"
    storage = checks.open_storage(root, "chaos", None)
    assert checks.submission_is_final_models(root, work / "data" / "test.csv", storage) == "ok"
    lines = (root / "submission.csv").read_text().splitlines()
    image, label = lines[7].split(",")
    lines[7] = f"{image},{(int(label) + 1) % 10}"  # row 7's label is no longer the final model's
    (root / "submission.csv").write_text("\n".join(lines) + "\n")
    verdict = checks.submission_is_final_models(root, work / "data" / "test.csv", storage)
    assert verdict.startswith("1 of 100 labels differ") and "first rows [7]" in verdict


def test_faults_go_stage_by_stage_and_need_their_storage(chaos_modules) -> None:
    chaos, _, faults = chaos_modules
    counts = faults.parse_faults("sigint:2,kill,refit-report,stop:1", kills=3)
    assert counts == {"sigint": 2, "kill": 3, "refit-report": 1, "stop": 1}
    plan = faults.fault_plan(counts)
    assert plan == [
        ("sigint", "baselines"), ("kill", "baselines"), ("sigint", "cnn"), ("kill", "cnn"), ("stop", "cnn"),
        ("kill", "build"), ("refit-report", "refit-report"),
    ]  # fmt: skip
    assert faults.next_target("kill", "baselines", {"baselines", "cnn_search"}) == "build"
    assert faults.next_target("refit-report", "refit-report", {"refit"}) is None
    with pytest.raises(SystemExit) as exc:  # a SIGSTOP or a database restart needs --storage postgres
        chaos.main(["--faults", "kill:1,stop:1"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        chaos.main(["--faults", "kill:x"])
