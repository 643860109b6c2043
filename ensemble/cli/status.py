"""``ensemble status``: where a run stands (stages, plan, leaderboard so far), without its writer lock."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ensemble.cli.common import add_storage_arg

if TYPE_CHECKING:
    from ensemble.pipeline.status import RunStatus

WIDTH = 100  # a pipe or a narrow terminal: the tables at this width rather than squeezed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="where a run stands: its stages, the CNN plan, the leaderboard so far (safe while it runs)",
        description="Print the stages of runs/NAME (from stages.json: done or not, seconds, the preset and "
        "budget), the current CNN plan of ensemble run, and each study's best finished trial by validation "
        "accuracy, read from the run's Optuna storage. Reads only: it takes no lock, so it works while "
        "ensemble run, search or worker are going.",
    )
    p.add_argument("--run", default="main", metavar="NAME", help="run folder runs/NAME (default: main)")
    add_storage_arg(p)
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from ensemble.pipeline.status import run_status

    print_status(run_status(args.run, storage_url=args.storage))
    return 0


def print_status(status: RunStatus) -> None:
    """The run's stages and its leaderboard as rich tables (plain text when not a terminal)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ensemble.pipeline.state import clock

    console = Console(highlight=False)
    if console.width < WIDTH:
        console = Console(highlight=False, width=WIDTH)
    head = f"run {status.name} ({status.root})"
    if status.preset:
        head += f": preset {status.preset}"
    if status.budget_seconds is not None:
        head += f", time budget {clock(status.budget_seconds)} (mm:ss)"
    if status.wall_seconds is not None:
        head += f", took {clock(status.wall_seconds)}"
    console.print(head, soft_wrap=True)
    console.print(f"storage: {status.storage}", soft_wrap=True)
    stages = Table(title="Stages", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for name, right in (("stage", False), ("done", False), ("seconds", True), ("finished", False), ("note", False)):
        stages.add_column(name, justify="right" if right else "left", no_wrap=name != "note")
    for s in status.stages:
        seconds = "" if s.seconds is None else f"{s.seconds:,.1f}"
        stages.add_row(s.name, "yes" if s.done else "no", seconds, s.finished or "", s.note)
    console.print(stages)
    plan = status.plan
    if plan is not None:
        speed = f", {plan.images_per_second:,.0f} images/s" if plan.images_per_second else ""
        console.print(f"CNN plan: {plan.members} member(s) x {plan.epochs} epochs ({plan.why}{speed})", soft_wrap=True)
    if not status.leaderboard:
        console.print("leaderboard: no study in the storage yet", soft_wrap=True)
        return
    board = Table(title="Leaderboard so far (validation accuracy)", title_justify="left", box=box.SIMPLE_HEAD)
    columns = ("#", "study", "best trial", "val acc", "complete", "running", "waiting", "pruned", "failed")
    for i, name in enumerate(columns):
        board.add_column(name, justify="left" if i == 1 else "right", no_wrap=True)
    for rank, r in enumerate(status.leaderboard, 1):
        acc = "" if r.val_accuracy is None else f"{r.val_accuracy:.4f}"
        best = "" if r.best_trial is None else str(r.best_trial)
        counts = (r.complete, r.running, r.waiting, r.pruned, r.failed)
        board.add_row(str(rank), r.study, best, acc, *map(str, counts))
    console.print(board)
