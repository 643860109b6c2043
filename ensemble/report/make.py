"""``ensemble report`` as a library call: score every model, write the report files and the checked submission."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ensemble import logs
from ensemble.io import write_json
from ensemble.report.final import refit_entry, refit_sha256, write_final_submission
from ensemble.report.final_members import final_members
from ensemble.report.summary import ReportResult, collect, leaderboard_rows, significance

if TYPE_CHECKING:
    from ensemble.data.runs import Run


def make_report(
    run: Run,
    *,
    storage_url: str | None = None,
    top_cnn: int = 5,
    gallery: int = 40,
    say: Callable[[str], None] = logs.info,
) -> ReportResult:
    """Compare every model on the holdout, write runs/NAME/report/ and runs/NAME/submission.csv."""
    from ensemble.report.html import write_outputs

    result = collect(run, storage_url=storage_url, top_cnn=top_cnn, say=say)
    final = result.final
    result.mcnemar = significance(result)
    result.refit = refit_entry(run, final)
    if result.refit:
        from ensemble.inference.refit import current_refit

        refit = current_refit(run, final.name)
        result.final_members = final_members(refit) if refit is not None else []
    sub, labels = write_final_submission(run, result.refit or final)
    result.submission = sub
    result.submission_counts = np.bincount(labels, minlength=10).tolist()
    result.files = write_outputs(run, result, storage_url=storage_url, gallery=gallery)
    summary = {
        "final_model": final.name,
        "holdout_accuracy": final.scored.holdout_accuracy,
        "submission": str(sub),
        "leaderboard": leaderboard_rows(result.entries),
        "mcnemar": result.mcnemar.to_json() if result.mcnemar else {},
        "tta_and_ensembling": [g.as_dict() for g in result.gains],
        "refit_full": result.refit.note if result.refit else None,
        "refit_sha256": refit_sha256(run) if result.refit else None,
        "final_members": [m.as_dict() for m in result.final_members],
    }
    write_json(run.path("report", "summary.json"), summary)
    result.files.append(run.path("report", "summary.json"))
    return result


def run_report(
    run: Run,
    *,
    storage_url: str | None = None,
    top_cnn: int = 5,
    gallery: int = 40,
    say: Callable[[str], None] = logs.info,
) -> ReportResult:
    """Make the report (quietly, with matplotlib's Agg backend); ``say`` gets the lines about trials left out."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    from ensemble.data.runs import runs_dir, sweep_debris
    from ensemble.locks import run_lock
    from ensemble.report.make import make_report

    with run_lock(runs_dir(), run.name):  # one writer of the report and submission.csv
        sweep_debris(run.root)
        return make_report(run, storage_url=storage_url, top_cnn=top_cnn, gallery=gallery, say=say)
