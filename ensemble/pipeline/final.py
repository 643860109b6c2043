"""The anytime final stage of ``ensemble run``: more members on every labeled digit until the budget ends.

See :mod:`ensemble.inference.extend`. After each finished member the report stage runs again, so
``submission.csv`` always comes from the finished members only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ensemble.data.runs import Run
    from ensemble.pipeline.presets import Preset
    from ensemble.pipeline.stages import ReportOutcome
    from ensemble.pipeline.state import Log, Stages

END_MARGIN_S = 15.0  # the stage ends this long before the budget: the last lines, closing the studies
REPORT_S = 30.0  # a report's seconds when stages.json has none


def final_stage(
    run: Run, s: Preset, stages: Stages, end: float, log: Log, got: ReportOutcome, storage_url: str | None
) -> ReportOutcome:
    """Add final members until ``end``; returns what the last report found (``got`` when none was added)."""
    from ensemble.inference.extend import extend_final
    from ensemble.pipeline.stages import report_stage

    if stages.done("final"):
        log("final", "final members already trained (stages.json); skipping")
        return got
    t0 = time.time()
    if not s.refit_full or s.final_members <= 0:
        stages.finish("final", 0.0, skipped="refit_full is off" if not s.refit_full else "final_members is 0")
        return got
    report_seconds = stages.seconds("report")
    report_seconds = REPORT_S if report_seconds is None else report_seconds
    latest = [got]

    def after() -> None:
        latest.append(report_stage(run, stages, log, storage_url, again=True, show=False))

    added = extend_final(
        run,
        deadline=end - END_MARGIN_S,
        seed=s.seed,
        max_members=s.final_members,
        report_seconds=report_seconds,
        after=after,
        storage_url=storage_url,
        say=log.for_stage("final"),
    )
    members = [{"of": a.source, "epochs": a.epochs, "seconds": round(a.train_seconds, 1)} for a in added]
    stages.finish("final", time.time() - t0, added=members)
    if added:
        log("final", f"{len(added)} more member(s) joined the final vote in {time.time() - t0:.0f}s")
    return latest[-1]
