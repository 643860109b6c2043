"""The anytime final stage inside ``ensemble run``: a kill at any point leaves a valid submission."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_run import final_labels, tiny_args

from ensemble.cli import main
from ensemble.data.runs import open_run
from ensemble.report.final import refit_sha256
from ensemble.report.submission import check_submission

pytest.importorskip("keras")

KILL_IN = """\
import os, signal, sys
where = sys.argv.pop(1)
if where == "training":  # a member is being trained: nothing of it is published yet
    import ensemble.inference.extend as extend
    def train(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    extend._train_and_publish = train
else:  # the member is in ensemble-full; the report that rewrites the submission is next
    import ensemble.inference.final_members as fm
    first = fm.publish
    def publish(*args, **kwargs):
        first(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    fm.publish = publish
from ensemble.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _killed_in(where: str, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", KILL_IN, where, *args], env=env, timeout=600)
    assert done.returncode == -9


def _extra(root: Path) -> list[dict]:
    manifest = json.loads((root / "ensemble-full" / "manifest.json").read_text())
    return [e for e in manifest["members"] if e.get("extra_of")]


@pytest.mark.slow
def test_a_killed_final_stage_keeps_the_last_valid_submission(tmp_path: Path, runs_env: Path) -> None:
    from ensemble.inference.predict import load_ensemble

    args = tiny_args(tmp_path, "fin", "--time-budget", "10m")  # time for the one member, however slow the machine
    args[args.index("baselines=logreg,knn")] = "baselines="  # CNNs only: the final model has a refit
    root = runs_env / "fin"

    _killed_in("training", args)  # after the refit and its report, while the first member trains
    stages = json.loads((root / "stages.json").read_text())["stages"]
    assert stages["refit"]["done"] and "final" not in stages and _extra(root) == []
    refit = np.load(root / "ensemble-full" / "proba_test.npy").argmax(axis=1)
    np.testing.assert_array_equal(check_submission(root / "submission.csv", n_rows=40), refit)  # the refit's
    assert load_ensemble(root / "ensemble-full").members  # every hash verifies

    _killed_in("published", args)  # the re-run trains the member; killed before the submission is rewritten
    assert len(_extra(root)) == 1 and not list(root.glob(".ensemble-full-*"))
    np.testing.assert_array_equal(check_submission(root / "submission.csv", n_rows=40), refit)  # still valid
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["refit_sha256"] != refit_sha256(open_run("fin", say=lambda s: None))  # and says it is older

    assert main(args) == 0  # the re-run mends it: the submission comes from every finished member
    full = np.load(root / "ensemble-full" / "proba_test.npy").argmax(axis=1)
    np.testing.assert_array_equal(check_submission(root / "submission.csv", n_rows=40), full)
    np.testing.assert_array_equal(full, final_labels("fin"))
    assert len(_extra(root)) == 1 and json.loads((root / "stages.json").read_text())["stages"]["final"]["done"]
