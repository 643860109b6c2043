"""A report's sections: a title, text, an optional table and an optional figure, for the HTML and Markdown writers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Table:
    """A table as text cells: column heads and rows."""

    heads: list[str]
    rows: list[list[str]]


class Section(NamedTuple):
    """One section of report.html and report.md; ``figure`` names a PNG of :class:`ensemble.report.html.Figures`."""

    title: str
    text: str
    table: Table | None = None
    figure: str | None = None
