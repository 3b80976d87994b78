"""The gate before any table: one code version (``provenance.code_sha``) across the cells, and
one config across the seeds of each (scale, task, optimizer, backend)."""

from __future__ import annotations

import json
from pathlib import Path

UNKNOWN = "unknown"  # summaries written before provenance had a code_sha
GROUP = ("scale", "task", "optimizer", "backend")
# Config keys that differ between the seeds of one entry by design: the seed, and the curvature
# diagnostics the config turns on for some seeds only (they observe, never change, the run).
PER_SEED = ("seed", "diagnostics")
MAX_CELLS = 5  # cells named per version or config
MAX_GROUPS = 10  # entries named with mixed configs
FIX = (
    "Rerun the stale cells (delete their folders, or `snakemake --cores all --forcerun cell` "
    "for all), or accept the mix with `snakemake --config allow_mixed_provenance=True` "
    "(`hessbench-report aggregate --allow-mixed-provenance`)."
)


class ProvenanceError(ValueError):
    """Summaries that should not share one table: mixed code versions or configs."""


def code_version(summary: dict) -> str:
    return (summary.get("provenance") or {}).get("code_sha") or UNKNOWN


def _flat(value, prefix: str = "") -> dict[str, str]:
    """A config as {dotted key: JSON of its value}, nested mappings flattened."""
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def _config(summary: dict) -> dict[str, str]:
    config = {k: v for k, v in (summary.get("config") or {}).items() if k not in PER_SEED}
    return _flat(config)


def _cells(paths: list[Path]) -> str:
    names = [str(Path(p).parent) for p in sorted(paths)]
    more = [f"... and {len(names) - MAX_CELLS} more"] if len(names) > MAX_CELLS else []
    return "\n".join(f"      {n}" for n in names[:MAX_CELLS] + more)


def _versions(summaries: list[tuple[Path, dict]]) -> str | None:
    by_sha: dict[str, list[Path]] = {}
    for path, summary in summaries:
        by_sha.setdefault(code_version(summary), []).append(path)
    if len(by_sha) < 2:
        return None
    lines = [f"cells from {len(by_sha)} code versions (provenance.code_sha):"]
    for sha, paths in sorted(by_sha.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines += [f"  {sha[:12]}: {len(paths)} cell(s)", _cells(paths)]
    return "\n".join(lines)


def _configs(name: str, members: list[tuple[Path, dict]]) -> str | None:
    by_config: dict[str, tuple[dict[str, str], list[Path]]] = {}
    for path, summary in members:
        flat = _config(summary)
        by_config.setdefault(json.dumps(flat, sort_keys=True), (flat, []))[1].append(path)
    if len(by_config) < 2:
        return None
    variants = list(by_config.values())
    keys = sorted(set().union(*(f for f, _ in variants)))
    differing = [k for k in keys if len({f.get(k, "<absent>") for f, _ in variants}) > 1]
    lines = [f"{name}: seeds run under {len(variants)} configs, differing in {differing}:"]
    for flat, paths in variants:
        values = ", ".join(f"{k}={flat.get(k, '<absent>')}" for k in differing)
        lines += [f"  {values[:200]}: {len(paths)} cell(s)", _cells(paths)]
    return "\n".join(lines)


def check(summaries: list[tuple[Path, dict]]) -> None:
    """Raise :class:`ProvenanceError` naming every mix of code versions, and the entries whose
    seeds ran under different configs, with the cells of each; silent otherwise."""
    problems = [p] if (p := _versions(summaries)) else []
    groups: dict[tuple, list[tuple[Path, dict]]] = {}
    for path, summary in summaries:
        key = tuple(summary.get(k, (summary.get("config") or {}).get(k)) for k in GROUP)
        groups.setdefault(key, []).append((path, summary))
    mixed = [
        text
        for key, members in sorted(groups.items(), key=lambda kv: str(kv[0]))
        if (text := _configs("/".join(map(str, key)), members))
    ]
    problems += mixed[:MAX_GROUPS]
    if len(mixed) > MAX_GROUPS:
        problems.append(f"... and {len(mixed) - MAX_GROUPS} more entries with mixed configs")
    if problems:
        raise ProvenanceError("\n".join(problems) + "\n" + FIX)
