"""Stage ``acquire``: labelled 10 s clips -> ``data/raw/clips/*.flac`` + ``data/raw/manifest.parquet``.

``source.kind`` picks where clips come from. ``synthetic`` (the offline default)
renders them from :mod:`pipeline.synthetic`, labelled with real ontology ids.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from pipeline import params as params_module
from pipeline.files import remove_partials, write_flac
from pipeline.manifest import write_manifest
from pipeline.ontology import Ontology
from pipeline.params import Params
from pipeline.synthetic import CATALOGUE, SyntheticClass, render_clip

RAW_DIR = Path("data/raw")
CLIPS_SUBDIR = "clips"
MANIFEST_NAME = "manifest.parquet"


class AcquireError(RuntimeError):
    """The source cannot deliver what params.yaml asks for."""


@dataclass(frozen=True)
class SyntheticClip:
    id: str
    cls: SyntheticClass
    overlay: SyntheticClass | None
    seed: tuple[int, int, int]


def plan_synthetic(source: params_module.SourceParams, ontology: Ontology) -> list[SyntheticClip]:
    """Which clips to render. Each clip's randomness comes from (seed, class, clip) alone,
    so any clip can be regenerated independently and identically."""
    if source.num_classes > len(CATALOGUE):
        raise AcquireError(f"source.num_classes={source.num_classes}: the synthetic catalogue "
                           f"has {len(CATALOGUE)} classes")
    chosen = CATALOGUE[:source.num_classes]
    parents = {c.name: set(ontology.parents(ontology.resolve(c.name))) for c in chosen}
    clips = []
    for class_index, cls in enumerate(chosen):
        partners = [c for c in chosen if not parents[c.name] & parents[cls.name] and c is not cls]
        for clip_index in range(source.clips_per_class):
            seed = (source.seed, class_index, clip_index)
            rng = np.random.default_rng(seed + (1,))
            overlay = None
            if partners and rng.random() < source.two_label_fraction:
                overlay = partners[rng.integers(len(partners))]
            clips.append(SyntheticClip(f"syn-{class_index:02d}-{clip_index:04d}", cls, overlay, seed))
    return clips


def acquire_synthetic(params: Params, raw_dir: Path, ontology: Ontology) -> list[dict]:
    spec = params.spec
    clips_dir = raw_dir / CLIPS_SUBDIR
    clips_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(clips_dir)
    rows = []
    for clip in tqdm(plan_synthetic(params.source, ontology), desc="acquire synthetic",
                     unit="clip", file=sys.stderr):
        audio = render_clip(clip.cls, np.random.default_rng(clip.seed), spec.sample_rate,
                            spec.clip_seconds, overlay=clip.overlay)
        path = clips_dir / f"{clip.id}.flac"
        write_flac(path, audio, spec.sample_rate)
        info = sf.info(path)
        labels = [ontology.resolve(clip.cls.name)]
        if clip.overlay is not None:
            labels.append(ontology.resolve(clip.overlay.name))
        rows.append(dict(
            id=clip.id, source="synthetic", origin=clip.cls.recipe.__name__,
            start_seconds=0.0, end_seconds=spec.clip_seconds, labels=labels,
            path=f"{CLIPS_SUBDIR}/{path.name}", status="ok", error_kind=None, error=None,
            attempts=1, bytes=path.stat().st_size, duration_seconds=info.frames / info.samplerate,
            sample_rate=info.samplerate, updated_at=None,
        ))
    _remove_strays(clips_dir, {Path(r["path"]).name for r in rows})
    return rows


def _remove_strays(clips_dir: Path, keep: set[str]) -> None:
    """Clips of an earlier configuration would otherwise sit untracked beside the new ones."""
    for path in clips_dir.glob("*.flac"):
        if path.name not in keep:
            path.unlink()


def acquire(params: Params, raw_dir: Path = RAW_DIR, ontology: Ontology | None = None) -> list[dict]:
    ontology = ontology or Ontology.load()
    if params.source.kind != "synthetic":
        raise AcquireError(f"source.kind={params.source.kind!r} is not available yet in this "
                           "version; use source.kind: synthetic")
    rows = acquire_synthetic(params, raw_dir, ontology)
    write_manifest(rows, raw_dir / MANIFEST_NAME)
    return rows


def summary(rows: list[dict], ontology: Ontology) -> str:
    status = Counter(r["status"] for r in rows)
    per_class = Counter(ontology.name(r["labels"][0]) for r in rows if r["status"] == "ok")
    hours = sum(r["duration_seconds"] or 0 for r in rows if r["status"] == "ok") / 3600
    lines = [f"{len(rows)} clips: " + ", ".join(f"{status[s]} {s}" for s in sorted(status)),
             f"{hours:.2f} h of audio, {len(per_class)} classes, "
             f"{sum(len(r['labels']) > 1 for r in rows)} clips with two labels"]
    lines += [f"  {count:5d}  {name}" for name, count in sorted(per_class.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(params_module.PARAMS_YAML))
    parser.add_argument("--out", default=str(RAW_DIR), help="folder for clips/ and manifest.parquet")
    args = parser.parse_args(argv)
    ontology = Ontology.load()
    rows = acquire(params_module.load(args.params), Path(args.out), ontology)
    print(summary(rows, ontology))


if __name__ == "__main__":
    main()
