"""One self-contained HTML5 page of tables: inline CSS, no scripts, no external assets, so the
file can be mailed, archived as a CI artifact or opened offline and look the same."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.leaderboard { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1em; }
table.leaderboard th, table.leaderboard td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
table.leaderboard th { background: #f0f0f0; text-align: left; }
table.leaderboard td { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.leaderboard tr.unranked td { color: #777; background: #fafafa; font-style: italic; }
p.note { max-width: 60em; }
figure { margin: 2em 0; }
figure img { max-width: 100%; }
figcaption { max-width: 60em; font-size: 0.9em; color: #444; }
"""


class Section(NamedTuple):
    heading: str
    table: pd.DataFrame
    text: str = ""
    table_id: str | None = None
    # one CSS class per table row ("" for none), e.g. "unranked"
    row_classes: Sequence[str] | None = None


def html_id(text: str) -> str:
    """An id attribute value: HTML5 forbids whitespace, and other characters would need
    escaping in CSS selectors and URL fragments."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "table"


def _paragraphs(text: str, css: str = "note") -> str:
    return "".join(
        f'<p class="{css}">{html.escape(part.strip())}</p>\n'
        for part in text.split("\n\n")
        if part.strip()
    )


def table_html(table: pd.DataFrame, table_id: str, row_classes: Sequence[str] | None = None) -> str:
    """``table`` as an HTML table (cells escaped, headers in ``<th>``), with a class on each
    row that has one: ``to_html`` has no per-row attributes, so they are added to its rows."""
    text = table.to_html(
        index=False, table_id=table_id, classes="leaderboard", border=0, escape=True, na_rep="–"
    )
    # to_html always adds its own "dataframe" class: the page styles "leaderboard" only
    text = text.replace('class="dataframe leaderboard"', 'class="leaderboard"', 1)
    if not row_classes:
        return text
    head, body = text.split("<tbody>", 1)
    rows = body.split("<tr>")
    if len(rows) - 1 != len(row_classes):
        raise ValueError(f"{len(row_classes)} row classes for {len(rows) - 1} rows")
    for i, css in enumerate(row_classes, start=1):
        rows[i] = (f'<tr class="{html.escape(css)}">' if css else "<tr>") + rows[i]
    return head + "<tbody>" + rows[0] + "".join(rows[1:])


def figure_html(png: Path, caption: str) -> str:
    """``png`` inlined as a data URL (the page stays one file), with its caption."""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return (
        f'<figure id="figure-{html_id(Path(png).stem)}">'
        f'<img alt="{html.escape(Path(png).name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def page(
    title: str,
    intro: str,
    sections: Iterable[Section],
    figures: Iterable[tuple[Path, str]] = (),
) -> str:
    """The page: ``title`` as its title and first heading, ``intro`` (paragraphs split on
    blank lines), then per section a heading, its text and its table, then ``figures``
    ((PNG, caption) pairs) under "Figures"."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        _paragraphs(intro, "intro"),
    ]
    for section in sections:
        table_id = html_id(section.table_id or section.heading)
        parts += [
            f'<section id="section-{table_id}">',
            f"<h2>{html.escape(section.heading)}</h2>",
            _paragraphs(section.text),
            table_html(section.table, table_id, section.row_classes),
            "</section>",
        ]
    figures = list(figures)
    if figures:
        parts += ['<section id="figures">', "<h2>Figures</h2>"]
        parts += [figure_html(png, caption) for png, caption in figures]
        parts.append("</section>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
