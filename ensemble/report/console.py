"""The report on the terminal: the holdout leaderboard as a table, the significance test, the files written."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ensemble.report.summary import ReportResult

SHORT = {
    "rank": "#", "holdout_accuracy": "holdout acc", "ci": "95% CI", "holdout_logloss": "log loss", "ece": "ECE",
    "val_accuracy": "val acc", "fit_seconds": "fit s", "predict_ms_per_1000": "ms/1000", "size_bytes": "size",
}  # fmt: skip
WIDTH = 175  # the leaderboard table with every column


def print_report(result: ReportResult) -> None:
    """The leaderboard as a rich table, the significance test, the final model and the paths written."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ensemble.report.html import HEADERS, fmt
    from ensemble.report.summary import leaderboard_rows

    console = Console(highlight=False)
    if console.width < WIDTH:  # a pipe or a narrow terminal: print the full table rather than squeeze it
        console = Console(highlight=False, width=WIDTH)
    rows = leaderboard_rows(result.entries)
    table = Table(title="Holdout leaderboard", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for i, (_, key) in enumerate(HEADERS):
        table.add_column(SHORT.get(key, key), justify="left" if 0 < i < 3 else "right", no_wrap=True)
    for r in rows:
        style = "bold green" if r["model"] == result.final.name else None
        table.add_row(*[fmt(k, r) for _, k in HEADERS], style=style)
    console.print(table)
    if result.mcnemar:
        console.print(result.mcnemar.words, soft_wrap=True)
    for g in result.gains:
        gain = "" if g.gain is None else f" ({g.gain * 100:+.2f} pts)"
        console.print(f"  {g.step}: holdout {g.holdout_accuracy:.4f}{gain}", soft_wrap=True)
    final = result.final
    if result.refit:
        console.print(f"final refit: {result.refit.note}", soft_wrap=True)
    for m in result.final_members:
        how = "kept as trained" if m.seed is None else f"seed {m.seed}, {m.epochs} epochs on {m.rows:,} digits"
        console.print(f"  {m.name} ({m.configuration}'s configuration): {how}, weight {m.weight:.4f}", soft_wrap=True)
    console.print(
        f"final model: {final.name} (holdout accuracy {final.scored.holdout_accuracy:.4f}) -> "
        f"{result.submission} (checked: {sum(result.submission_counts):,} rows)",
        soft_wrap=True,
    )
    for path in result.files:
        console.print(f"wrote {path}", soft_wrap=True)
