"""``specldm compare [A] [B]``: two revisions' tracked scores side by side with their intervals.

A revision is anything ``git show`` takes (a branch, a tag, a commit); ``workspace`` (or
nothing, for B) is the files as they are. A difference is marked as beyond the noise when the
two 95% intervals do not overlap: for two independent scores that is a test at about the 0.5%
level, so a mark is rarely luck, and no mark does not prove there is no difference.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.paths import METRICS_DIR

WORKSPACE = "workspace"
FILES = ("metrics.json", "intervals.json")


def read_scores(revision: str, root: Path = Path(".")) -> tuple[dict, dict]:
    """(values, intervals) of ``metrics/`` at ``revision``; intervals are empty where a
    revision predates them."""
    found = []
    for name in FILES:
        path = METRICS_DIR / name
        if revision == WORKSPACE:
            text = (root / path).read_text() if (root / path).is_file() else None
        else:
            shown = subprocess.run(["git", "show", f"{revision}:{path.as_posix()}"], cwd=root,
                                   capture_output=True, text=True)
            if shown.returncode and name == FILES[0]:
                raise PipelineError(f"{revision}: no {path} there ({shown.stderr.strip().splitlines()[-1]})")
            text = shown.stdout if not shown.returncode else None
        found.append(json.loads(text) if text else {})
    return found[0], found[1]


def differs(a: dict | None, b: dict | None) -> bool:
    if not a or not b or not all(math.isfinite(x) for x in (a["low"], a["high"], b["low"], b["high"])):
        return False
    return a["high"] < b["low"] or b["high"] < a["low"]


def compared(revision_a: str, revision_b: str, root: Path = Path(".")) -> list[dict]:
    """Every score of either revision: ``key``, each side's ``a``/``b`` cell (value and interval),
    the ``delta`` (b - a) and whether it is ``beyond`` the noise."""
    values_a, intervals_a = read_scores(revision_a, root)
    values_b, intervals_b = read_scores(revision_b, root)

    def cell(values, intervals, key):
        if key not in values:
            return "–"
        interval = intervals.get(key)
        return f"{values[key]:.4g}" + (f" [{interval['low']:.4g}, {interval['high']:.4g}]" if interval else "")

    return [{"key": key, "a": cell(values_a, intervals_a, key), "b": cell(values_b, intervals_b, key),
             "delta": values_b[key] - values_a[key] if key in values_a and key in values_b else math.nan,
             "beyond": differs(intervals_a.get(key), intervals_b.get(key))}
            for key in sorted(set(values_a) | set(values_b))]


def report(revision_a: str, revision_b: str, root: Path = Path(".")) -> tuple[str, int]:
    """The comparison as a Markdown table, and how many scores differ beyond the noise."""
    rows = compared(revision_a, revision_b, root)
    lines = [f"| score | {revision_a} | {revision_b} | difference | beyond noise |", "|---|---|---|---|---|"]
    lines += [f"| {r['key']} | {r['a']} | {r['b']} | {r['delta']:+.4g} | {'**yes**' if r['beyond'] else ''} |"
              for r in rows]
    marked = sum(r["beyond"] for r in rows)
    lines.append(f"\n{marked} of {len(rows)} scores differ beyond the noise (95% intervals that do not overlap).")
    return "\n".join(lines) + "\n", marked
