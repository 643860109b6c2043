"""Writes runs/NAME/report/: leaderboard.csv, report.md (+ img/*.png) and a self-contained report.html."""

from __future__ import annotations

import base64
import csv
import html
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ensemble.io import atomic_write
from ensemble.report import plots
from ensemble.report.sections import Section, Table

if TYPE_CHECKING:
    import optuna

    from ensemble.data.runs import Run
    from ensemble.report.summary import Gain, LeaderboardRow, ReportResult

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#212529;
padding:0 16px;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0.2em} h2{font-size:1.2em;border-bottom:1px solid #dee2e6;padding-bottom:4px;
margin-top:1.8em} .muted{color:#6c757d;font-size:0.9em}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0} th,td{padding:4px 8px;border-bottom:1px solid #e9ecef;
text-align:right;white-space:nowrap} th{background:#f1f3f5;position:sticky;top:0} td.l,th.l{text-align:left}
tr.final td{background:#ebfbee;font-weight:600} .box{background:#f8f9fa;border-left:4px solid #2b8a3e;padding:10px 14px;
margin:10px 0} img{max-width:100%;height:auto;border:1px solid #f1f3f5} .wrap{overflow-x:auto}
.grid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
"""
NO_CNN = "this run has no CNN study"
HEADERS = (
    ("#", "rank"), ("model", "model"), ("kind", "kind"), ("holdout acc", "holdout_accuracy"), ("95% CI", "ci"),
    ("log loss", "holdout_logloss"), ("ECE", "ece"), ("val acc", "val_accuracy"), ("fit s", "fit_seconds"),
    ("predict ms/1000", "predict_ms_per_1000"), ("params", "params"), ("size", "size_bytes"),
    ("trained on", "device"),
)  # fmt: skip


def fmt(key: str, row: LeaderboardRow) -> str:
    """One leaderboard cell as text."""
    v = row.get(key)
    if key == "ci":
        return f"{row['ci95_low']:.4f}–{row['ci95_high']:.4f}"
    if v is None or v == "":
        return "–"
    if key in ("holdout_accuracy", "val_accuracy", "holdout_logloss", "ece"):
        return f"{v:.4f}"
    if key == "fit_seconds":
        return f"{v:,.1f}"
    if key == "predict_ms_per_1000":
        return f"{v:,.1f}"
    if key == "params":
        return f"{int(v):,}"
    if key == "size_bytes":
        return _size(int(v))
    return str(v)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def write_csv(path: Path, rows: list[LeaderboardRow]) -> Path:
    from ensemble.report.summary import CSV_COLUMNS

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return atomic_write(path, buf.getvalue())


@dataclass(frozen=True)
class ClassRow:
    """One digit's accuracy (recall) on the holdout."""

    digit: int
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def per_class(y: np.ndarray, pred: np.ndarray) -> list[ClassRow]:
    """Accuracy (recall) of each digit on the holdout."""
    return [ClassRow(c, int((y == c).sum()), int((pred[y == c] == c).sum())) for c in range(10)]


#: The figures a report draws, by file name (``img/NAME.png``).
FIGURES = ("leaderboard", "confusion", "gallery", "history", "importance", "curves")


@dataclass
class Figures:
    """Every figure of a report as PNG bytes (None when there is nothing to draw), and what they count."""

    pngs: dict[str, bytes | None]
    n_gallery: int
    n_wrong: int
    per_class: list[ClassRow]
    importance_note: str = ""

    def png(self, key: str | None) -> bytes | None:
        return self.pngs.get(key) if key else None


def figures(run: Run, result: ReportResult, *, storage_url: str | None, gallery: int) -> Figures:
    """Every figure as PNG bytes (None when there is nothing to draw), plus notes."""
    from ensemble.report.summary import leaderboard_rows

    final = result.final
    y = result.y
    proba = final.holdout()
    pred = proba.argmax(axis=1)
    x_hold = run.part("holdout")[0]
    gal, n_gal = plots.gallery_png(x_hold, y, proba, gallery)
    pngs: dict[str, bytes | None] = dict.fromkeys(FIGURES)
    pngs["leaderboard"] = plots.leaderboard_chart(leaderboard_rows(result.entries))
    pngs["confusion"] = plots.confusion_matrix_png(y, pred, f"{final.name} on the holdout ({len(y):,} digits)")
    pngs["gallery"] = gal
    figs = Figures(pngs, n_gallery=n_gal, n_wrong=int((pred != y).sum()), per_class=per_class(y, pred))
    study = _cnn_study(run, storage_url)
    if study is None:
        figs.importance_note = NO_CNN
        return figs
    pngs["history"] = plots.history_png(study)
    pngs["importance"], figs.importance_note = plots.importance_png(study)
    pngs["curves"] = plots.learning_curves_png(study)
    return figs


def _cnn_study(run: Run, storage_url: str | None) -> optuna.Study | None:
    import optuna

    from ensemble.search.artifacts import CNN_STUDY
    from ensemble.search.storage import open_storage

    storage = open_storage(run, storage_url)
    if CNN_STUDY not in optuna.get_all_study_names(storage=storage):
        return None
    return optuna.load_study(study_name=CNN_STUDY, storage=storage)


def _img_html(png: bytes | None, alt: str, missing: str = "") -> str:
    if png is None:
        return f'<p class="muted">{html.escape(missing or "nothing to show")}</p>'
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table_html(heads: list[str], rows: list[list[str]], left: int = 1, classes: list[str] | None = None) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(heads))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{classes[r]}"' if classes and classes[r] else ""
        tds = "".join(f'<td class="{"l" if i < left else ""}">{html.escape(c)}</td>' for i, c in enumerate(row))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f'<div class="wrap"><table><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _md_table(heads: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def sections(run: Run, result: ReportResult, figs: Figures) -> list[Section]:
    """Every section of the report, shared by HTML and Markdown."""
    from ensemble.report.summary import leaderboard_rows

    rows = leaderboard_rows(result.entries)
    final = result.final
    lb = Table([h for h, _ in HEADERS], [[fmt(k, r) for _, k in HEADERS] for r in rows])
    counts = " ".join(f"{d}:{c}" for d, c in enumerate(result.submission_counts))
    notes = "; ".join(f"{e.name}: {e.note}" for e in result.entries if e.note)
    out = [
        Section(
            "Final model",
            f"{final.name} has the best holdout accuracy ({final.scored.holdout_accuracy:.4f}, "
            f"{final.scored.holdout_correct:,}/{len(result.y):,}); ties go to the cheaper model. "
            f"It wrote {result.submission} ({sum(result.submission_counts):,} rows, checked; "
            f"predicted labels {counts})." + (f" Final refit: {result.refit.note}" if result.refit else ""),
        ),
        Section(
            "Leaderboard (holdout)",
            "Every model scored on the holdout split, which no model was trained or selected on. "
            "95% CI: Wilson score interval. ECE: expected calibration error over 15 confidence bins. "
            "fit s: training time of the trial (ensembles: sum over members). predict ms/1000: measured "
            "per trial over its validation+holdout+test predictions (ensembles: members' sum x TTA views, "
            f"an estimate). size: model files on disk. {notes}",
            lb,
            "leaderboard",
        ),
    ]
    if result.final_members:
        from ensemble.report.final import members_section

        out.append(members_section(result))
    mc = result.mcnemar
    out.append(Section("Is the ensemble really better?", mc.words if mc else "No ensemble was built in this run."))
    out.append(_gains_section(result.gains))
    pc_rows = [[str(r.digit), f"{r.n:,}", f"{r.correct:,}", f"{r.accuracy:.4f}"] for r in figs.per_class]
    out.append(
        Section(
            f"Per-class accuracy ({final.name})", "", Table(["digit", "holdout digits", "correct", "accuracy"], pc_rows)
        )
    )
    out.append(
        Section(
            "Confusion matrix", "Rows: true digit; columns: predicted digit; off-diagonal shaded.", None, "confusion"
        )
    )
    out.append(
        Section(
            "Misclassified holdout digits",
            f"{figs.n_wrong} of {len(result.y):,} holdout digits are wrong; the {figs.n_gallery} most "
            "confident mistakes: true label → predicted label, and the model's confidence.",
            figure="gallery",
        )
    )
    no_study = "This run has no CNN study (yet)." if figs.importance_note == NO_CNN else ""
    out.append(Section("CNN study: optimization history", no_study, figure="history"))
    out.append(Section("CNN study: parameter importances", no_study or figs.importance_note, figure="importance"))
    out.append(Section("CNN study: learning curves (per-epoch validation accuracy)", no_study, figure="curves"))
    return out


def _gains_section(gains: list[Gain]) -> Section:
    """What each step (ensembling, TTA, weights) added on the holdout."""
    if not gains:
        return Section("What ensembling and TTA added", "No ensemble was built in this run.")
    rows = [
        [
            g.step,
            "–" if g.val_accuracy is None else f"{g.val_accuracy:.4f}",
            f"{g.holdout_accuracy:.4f}",
            "–" if g.gain is None else f"{g.gain * 100:+.2f} pts",
            f"{g.holdout_logloss:.4f}",
        ]
        for g in gains
    ]
    return Section(
        "What ensembling and TTA added",
        "Each step adds one thing to the previous one (choices made on validation, measured on the holdout).",
        Table(["step", "val acc", "holdout acc", "holdout change", "holdout log loss"], rows),
    )


def write_outputs(run: Run, result: ReportResult, *, storage_url: str | None, gallery: int) -> list[Path]:
    """Write leaderboard.csv, report.md (+ img/) and report.html; returns the paths."""
    from ensemble.report.summary import leaderboard_rows

    folder = run.path("report")
    (folder / "img").mkdir(parents=True, exist_ok=True)
    figs = figures(run, result, storage_url=storage_url, gallery=gallery)
    secs = sections(run, result, figs)
    written = [write_csv(folder / "leaderboard.csv", leaderboard_rows(result.entries))]
    for key, png in figs.pngs.items():
        if png is not None:
            atomic_write(folder / "img" / f"{key}.png", png)
    title = f"Run {run.name}: holdout report"
    sizes = run.meta["split"]["sizes"]
    sub = (
        f"data {run.meta['data']['how']} ({run.meta['data']['path']}), fingerprint "
        f"{run.meta['data']['fingerprint'][:16]}; split train {sizes['train']:,} / val {sizes['val']:,} / "
        f"holdout {sizes['holdout']:,}; test {len(run.x_test):,}; written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )
    written.append(atomic_write(folder / "report.md", _markdown(title, sub, secs, figs)))
    written.append(atomic_write(folder / "report.html", _html(title, sub, secs, figs, result)))
    return written


def _markdown(title: str, sub: str, secs: list[Section], figs: Figures) -> str:
    parts = [f"# {title}", "", sub, ""]
    for head, text, table, fig in secs:
        parts += [f"## {head}", ""]
        if text:
            parts += [text, ""]
        if table:
            parts += [_md_table(table.heads, table.rows), ""]
        if figs.png(fig) is not None:
            parts += [f"![{head}](img/{fig}.png)", ""]
    return "\n".join(parts)


def _html(title: str, sub: str, secs: list[Section], figs: Figures, result: ReportResult) -> str:
    n_final = 1 + [e.name for e in result.entries].index(result.final.name)
    body = [f"<h1>{html.escape(title)}</h1>", f'<p class="muted">{html.escape(sub)}</p>']
    for i, (head, text, table, fig) in enumerate(secs):
        body.append(f"<h2>{html.escape(head)}</h2>")
        if text:
            body.append(f'<div class="box">{html.escape(text)}</div>' if i == 0 else f"<p>{html.escape(text)}</p>")
        if table:
            heads, rows = table.heads, table.rows
            is_lb = heads and heads[0] == "#"
            classes = ["final" if is_lb and r[0] == str(n_final) else "" for r in rows]
            body.append(_table_html(heads, rows, left=3 if is_lb else 1, classes=classes))
        if fig and (figs.png(fig) is not None or not text):
            body.append(_img_html(figs.png(fig), head, "nothing to show yet"))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
