"""The final model's submission: runs/NAME/submission.csv, from the model itself or its refit on every label."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.errors import UsageError
from ensemble.report.rows import Entry, proba_loader
from ensemble.report.sections import Section, Table
from ensemble.report.summary import ReportResult

if TYPE_CHECKING:
    from ensemble.data.runs import Run


def write_final_submission(run: Run, entry: Entry) -> tuple[Path, np.ndarray]:
    """Write runs/NAME/submission.csv from ``entry``'s test probabilities; return it and its labels.

    The new file is written to a temporary file beside the old one, checked (``check_submission`` with
    the run's test-set size, and read back equal to the argmax) and only then renamed over it; if the
    check fails the temporary file is removed and the previous submission.csv is left as it was.
    """
    from ensemble.report.submission import write_submission

    p = entry.test()
    if p.shape != (len(run.x_test), 10):
        raise UsageError(f"{entry.name}: test probabilities have shape {p.shape}, the test set has {len(run.x_test)}")
    labels = p.argmax(axis=1)
    path = write_submission(run.path("submission.csv"), labels, n_rows=len(run.x_test))
    return path, labels


def refit_entry(run: Run, final: Entry) -> Entry | None:
    """The final model refitted on every labeled digit (``runs/NAME/ensemble-full``), if it was."""
    from ensemble.inference.refit import FOLDER, current_refit

    m = current_refit(run, final.name)
    if m is None:
        return None
    refits = [e for e in m.members if not e.extra_of]
    done = [e.name for e in refits if e.refit_full and e.refit_full.refit]
    kept = [e.name for e in refits if e.is_cnn and e.name not in done]
    extra = [e.name for e in m.extras]
    rows = m.refit_full.rows if m.refit_full else 0
    note = (
        f"the submission comes from {final.name} refitted on all {rows:,} labeled digits "
        f"(train + validation + holdout): {len(done)} CNN member(s) refitted"
        + (f", {len(kept)} kept as trained (no time): {', '.join(kept)}" if kept else "")
        + (f", {len(extra)} more trained with new seeds in the time left" if extra else "")
        + ". The refitted models have no holdout score of their own; the holdout figures above are those "
        "of the same configurations before the refit."
    )
    folder = run.path(FOLDER)
    return Entry(
        name=f"{final.name} refit on all labels",
        kind="refit",
        family=final.family,
        holdout=final.holdout,
        test=proba_loader(folder, "test"),
        note=note,
    )


def refit_sha256(run: Run) -> str:
    """The sha256 of ``ensemble-full/manifest.json``: which refit a submission was taken from."""
    from ensemble.combine.manifest import MANIFEST
    from ensemble.inference.refit import FOLDER
    from ensemble.search.artifacts import sha256_file

    return sha256_file(run.path(FOLDER, MANIFEST))


def submission_is_current(run: Run, summary: dict) -> bool:
    """Whether the report ``summary`` (summary.json) took its submission from what the final model is now.

    False when the final model has a refit (``ensemble-full``) that the submission does not come from,
    or the submission came from a refit that is no longer the final model's: e.g. after a kill between
    the refit and the report that follows it.
    """
    from ensemble.inference.refit import current_refit

    now = refit_sha256(run) if current_refit(run, summary["final_model"]) is not None else None
    return summary.get("refit_sha256") == now


def members_section(result: ReportResult) -> Section:
    """The CNNs the submission came from: configuration, seed, epochs, rows and weight of each."""
    heads = ["member", "configuration of", "seed", "epochs", "rows", "weight"]
    rows = [
        [
            m.name,
            m.configuration,
            "-" if m.seed is None else str(m.seed),
            "-" if m.epochs is None else str(m.epochs),
            "-" if m.rows is None else f"{m.rows:,}",
            f"{m.weight:.4f}",
        ]
        for m in result.final_members
    ]
    text = (
        "The CNNs of the submission's model, trained on every labeled digit: the refits of the final model's "
        "members, then the members trained with new seeds in the time the budget had left. A configuration "
        "keeps the weight chosen on validation, shared among its members in proportion to their epochs. "
        "They have no holdout score of their own. A dash: kept as trained in its trial (no time to refit)."
    )
    return Section("Final members", text, Table(heads, rows))
