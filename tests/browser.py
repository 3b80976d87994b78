"""Debian's headless Chromium for the tests that read a page as a browser renders it
(``./install.sh test`` installs it). The flags keep it off this machine's closed network."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "no chromium on PATH: ./install.sh test installs Debian's package"
    return found


def _run(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def dom(page: Path, profile: Path) -> str:
    """The page's DOM after Chromium parsed and laid it out."""
    return _run(page, profile, "--dump-dom").stdout


def screenshot(page: Path, png: Path, profile: Path, size=(1400, 1000)) -> Path:
    _run(page, profile, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}")
    return png


class Tables(HTMLParser):
    """Every <table> of a document: {id: [[cell text, ...] per row]}, header cells included."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id") or str(len(self.tables)), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(html)
    return parser.tables
