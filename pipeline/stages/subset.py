"""Stage ``subset``: the ontology-aware balanced subset, parent-class mixtures, captions, splits.

Reads ``data/raw/manifest.parquet`` (any source) and writes ``data/subset/index.parquet``
plus ``data/subset/report.json`` (per-class counts before and after, and every skipped row);
the rules are :mod:`pipeline.sources.subset`'s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config.core import PARAMS_YAML, load_sections
from pipeline.config.subset import SubsetParams
from pipeline.errors import stage_main
from pipeline.ontology import Ontology
from pipeline.paths import MANIFEST, SUBSET_DIR
from pipeline.sources.manifest import read_manifest
from pipeline.sources.subset import build_index, format_report, write_subset


@stage_main("subset")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    parser.add_argument("--manifest", default=str(MANIFEST))
    parser.add_argument("--out", default=str(SUBSET_DIR))
    args = parser.parse_args(argv)
    config = load_sections(args.params, subset=SubsetParams).subset
    table, report = build_index(read_manifest(args.manifest), config, Ontology.load())
    write_subset(table, report, Path(args.out))
    print(format_report(report), file=sys.stderr)


if __name__ == "__main__":
    main()
