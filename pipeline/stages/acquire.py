"""Stage ``acquire``: labelled 10 s clips -> ``data/raw/clips/part-NNNNN.parquet`` + ``data/raw/manifest.parquet``.

``source.kind`` picks where clips come from: ``synthetic`` (the offline default) renders
them from :mod:`pipeline.sources.synthetic`, labelled with real ontology ids; ``audioset``
downloads AudioSet segments (:mod:`pipeline.sources.audioset`); ``local`` cuts your own
recordings (:mod:`pipeline.sources.local`). All three write the same manifest.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections import Counter
from pathlib import Path

from pipeline.config.core import PARAMS_YAML, Sections, load_sections
from pipeline.config.engine import EngineParams
from pipeline.config.source import DownloadParams, SourceParams
from pipeline.config.spectrogram import RenderParams, SpectrogramParams, spectrogram_spec
from pipeline.engine import open_engine
from pipeline.errors import stage_main
from pipeline.files import remove_partials
from pipeline.ontology import Ontology
from pipeline.paths import RAW_DIR
from pipeline.sources.audioset import acquire_audioset
from pipeline.sources.clip_shards import Sealer, assign_shards, staged_path
from pipeline.sources.clips import ClipRules
from pipeline.sources.local import acquire_local
from pipeline.sources.manifest import write_manifest
from pipeline.sources.synthetic import acquire_synthetic

MANIFEST_NAME = "manifest.parquet"


def clip_rules(params: Sections) -> ClipRules:
    spec = spectrogram_spec(params.spectrogram, params.render)
    return ClipRules(spec.sample_rate, spec.clip_seconds, params.source.short_clips,
                     params.source.long_clips, params.source.min_rms_db)


def acquire(params: Sections, raw_dir: Path = RAW_DIR, ontology: Ontology | None = None,
            retry_failed: bool = False) -> tuple[list[dict], list[str]]:
    """Write the clip shards and the manifest; returns the rows and notes for :func:`summary`."""
    ontology = ontology or Ontology.load()
    source, manifest = params.source, raw_dir / MANIFEST_NAME
    remove_partials(staged_path(raw_dir, "").parent)
    notes: list[str] = []
    cluster = params.engine.kind != "local"
    with open_engine(params.engine) as engine:
        if source.kind == "audioset":
            # Sections outside this selection stay on disk: each cost a download, and widening
            # the selection again picks them up.
            rows, notes = acquire_audioset(source, params.download, clip_rules(params), raw_dir, manifest,
                                           ontology, retry_failed, engine if cluster else None,
                                           params.engine.task_clips)
        elif source.kind == "synthetic":
            rows = acquire_synthetic(params, raw_dir, ontology, engine)
        else:  # your recordings are on this machine: read here, whatever the engine
            rows = acquire_local(Path(source.dir), Path(source.labels_csv), clip_rules(params),
                                 raw_dir, ontology)
            assign_shards(rows, source.shard_clips)
    Sealer(rows, raw_dir, keep_unlisted=source.kind == "audioset").finish()
    write_manifest(rows, manifest)
    return rows, notes


MAX_CLASSES_LISTED = 30


def summary(rows: list[dict], ontology: Ontology, notes: list[str] = ()) -> str:
    status = Counter(r["status"] for r in rows)
    failures = Counter(r["error_kind"] for r in rows if r["status"] == "failed")
    ok = [r for r in rows if r["status"] == "ok"]
    per_class = Counter(ontology.name(r["labels"][0]) for r in ok)
    hours = sum(r["duration_seconds"] for r in ok) / 3600
    lines = [f"{len(rows)} clips: " + ", ".join(f"{status[s]} {s}" for s in sorted(status)),
             f"{hours:.2f} h of audio, {len(per_class)} classes, "
             f"{sum(len(r['labels']) > 1 for r in ok)} clips with two or more labels"]
    lines += notes
    if failures:
        lines.append("failed, by error kind:")
        lines += [f"  {count:6d}  {kind}" for kind, count in failures.most_common()]
    if status["pending"]:
        lines.append(f"{status['pending']} still pending: run the stage again to continue")
    if len(per_class) <= MAX_CLASSES_LISTED:
        lines.append("ok clips by first label:")
        lines += [f"  {count:6d}  {name}" for name, count in sorted(per_class.items())]
    return "\n".join(lines)


@stage_main("acquire")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    parser.add_argument("--out", default=str(RAW_DIR), help="folder for clips/ (the clip shards) and manifest.parquet")
    parser.add_argument("--retry-failed", action="store_true",
                        help="audioset: try permanent failures (removed, private...) again too")
    args = parser.parse_args(argv)
    params = load_sections(args.params, source=SourceParams, download=DownloadParams, engine=EngineParams,
                           spectrogram=SpectrogramParams, render=RenderParams)
    ontology = Ontology.load()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as cleanly as on Ctrl-C
    try:
        rows, notes = acquire(params, Path(args.out), ontology, args.retry_failed)
    except KeyboardInterrupt:
        print("acquire: interrupted; the manifest records every finished clip, and the next "
              "run continues from there", file=sys.stderr)
        sys.exit(130)
    print(summary(rows, ontology, notes))


if __name__ == "__main__":
    main()
