"""The ontology-aware balanced subset of a manifest: targets, roll-up, caps, splits, captions and
parent-class mixtures, as the ``subset`` stage writes them to ``data/subset/index.parquet``.

Target rule: each clip is balanced under exactly one *target* class, the rarest of its
labels that may be a target (trainable, not abstract, not blacklisted), counted over
the manifest; ties go to the deepest (most specific) class, then the smaller id. Classes
with fewer than ``min_per_class`` clips are rolled up to their nearest target ancestor
(repeatedly, since a parent may itself be small) or dropped; larger ones are capped at
``max_per_class`` by a seeded draw.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config.subset import SubsetParams
from pipeline.files import atomic_path, write_json
from pipeline.ontology import Ontology

INDEX_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("source_ids", pa.list_(pa.string()), nullable=False),  # manifest ids (2 for a mixture)
    pa.field("paths", pa.list_(pa.string()), nullable=False),  # relative to the manifest's folder
    pa.field("labels", pa.list_(pa.string()), nullable=False),
    pa.field("target", pa.string(), nullable=False),  # ontology id the row is balanced under
    pa.field("target_name", pa.string(), nullable=False),
    pa.field("parent", pa.string()),  # mixtures: the shared parent (== target)
    pa.field("caption", pa.string(), nullable=False),
    pa.field("is_mixture", pa.bool_(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
])


def pluralise(name: str) -> str:
    """"Bell" -> "Bells", "Siren" -> "Sirens", "Clock" -> "Clocks"; only the name before any comma."""
    head = name.split(",")[0].strip()
    lower = head.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return head + "es"
    if lower.endswith("y") and lower[-2:-1] not in tuple("aeiou"):
        return head[:-1] + "ies"
    return head + "s"


def mixture_caption(template: str, parent: str, a: str, b: str) -> str:
    """The report's caption; {parent} takes the plural, so '{parent}s' in the template is
    read as the plural marker and not doubled."""
    return template.replace("{parent}s", "{parent}").format(parent=pluralise(parent), a=a, b=b)


def choose_target(labels: list[str], frequency: Counter, ontology: Ontology) -> str | None:
    candidates = [label for label in labels if label in ontology and ontology.is_target(label)]
    if not candidates:
        return None
    return min(candidates, key=lambda c: (frequency[c], -ontology.depth(c), c))


def nearest_target_ancestor(class_id: str, ontology: Ontology) -> str | None:
    return next((a for a in ontology.ancestors(class_id) if ontology.is_target(a)), None)


def select_clips(manifest: pd.DataFrame, config: SubsetParams, ontology: Ontology,
                 skipped: Counter) -> tuple[pd.DataFrame, Counter]:
    """Usable clips with their target class after roll-up and caps, and the per-target
    counts before roll-up and caps."""
    usable = manifest[manifest.status == "ok"]
    skipped["status not ok"] += len(manifest) - len(usable)
    known = usable.labels.map(lambda labels: all(label in ontology for label in labels))
    skipped["unknown label"] += int((~known).sum())
    usable = usable[known]
    frequency = Counter(label for labels in usable.labels for label in labels)
    targets = usable.labels.map(lambda labels: choose_target(list(labels), frequency, ontology))
    skipped["no target label (abstract/blacklisted/untrainable)"] += int(targets.isna().sum())
    clips = usable.assign(target=targets)[targets.notna()].reset_index(drop=True)
    before = Counter(clips.target)

    while True:
        counts = clips.target.value_counts()
        small = counts[counts < config.min_per_class].index
        if len(small) == 0:
            break
        moved = False
        for class_id in small:
            parent = nearest_target_ancestor(class_id, ontology) if config.rollup else None
            rows = clips.target == class_id
            if parent is None:
                skipped[f"class below min_per_class={config.min_per_class}"] += int(rows.sum())
                clips = clips[~rows]
            else:
                clips.loc[rows, "target"] = parent
                moved = True
        clips = clips.reset_index(drop=True)
        if not moved:
            break

    rng = np.random.default_rng([config.seed, 0])
    kept = []
    for _, group in clips.groupby("target", sort=True):
        order = rng.permutation(len(group))[:config.max_per_class]
        kept.append(group.iloc[np.sort(order)])
    capped = pd.concat(kept) if kept else clips.iloc[:0]
    skipped[f"over max_per_class={config.max_per_class}"] += len(clips) - len(capped)
    return capped.sort_values("id").reset_index(drop=True), before


def assign_splits(clips: pd.DataFrame, config: SubsetParams) -> pd.Series:
    """Stratified by target; each class keeps at least one training clip."""
    rng = np.random.default_rng([config.seed, 1])
    split = pd.Series("train", index=clips.index)
    for _, group in clips.groupby("target", sort=True):
        order = group.index[rng.permutation(len(group))]
        n_test = min(round(len(order) * config.test_fraction), len(order) - 1)
        n_val = min(round(len(order) * config.val_fraction), len(order) - 1 - n_test)
        split[order[:n_test]] = "test"
        split[order[n_test:n_test + n_val]] = "val"
    return split


def draw_mixtures(train: pd.DataFrame, config: SubsetParams, ontology: Ontology) -> list[dict]:
    """``config.mixtures`` pairs of train clips whose targets are different children of one
    non-abstract parent. Deterministic for ``config.seed``."""
    by_target = {t: list(g.index) for t, g in train.groupby("target", sort=True)}
    families = defaultdict(list)
    for target in by_target:
        for parent in ontology.parents(target):
            if not ontology[parent].abstract:
                families[parent].append(target)
    families = {p: sorted(children) for p, children in sorted(families.items()) if len(children) >= 2}
    if config.mixtures and not families:
        raise ValueError("subset.mixtures > 0 but no two training classes share a non-abstract "
                         "parent; set subset.mixtures: 0 or add sibling classes")
    rng = np.random.default_rng([config.seed, 2])
    parents = list(families)
    rows = []
    for number in range(config.mixtures):
        parent = parents[rng.integers(len(parents))]
        class_a, class_b = rng.choice(families[parent], size=2, replace=False)
        a = train.loc[by_target[class_a][rng.integers(len(by_target[class_a]))]]
        b = train.loc[by_target[class_b][rng.integers(len(by_target[class_b]))]]
        rows.append(dict(
            id=f"mix-{number:05d}", source_ids=[a.id, b.id], paths=[a.path, b.path],
            labels=sorted(set(a.labels) | set(b.labels)), target=parent,
            target_name=ontology.name(parent), parent=parent,
            caption=mixture_caption(config.mixture_template, ontology.name(parent),
                                    ontology.name(class_a), ontology.name(class_b)),
            is_mixture=True, split="train",
        ))
    return rows


def build_index(manifest: pd.DataFrame, config: SubsetParams, ontology: Ontology) -> tuple[pa.Table, dict]:
    skipped: Counter = Counter()
    clips, before = select_clips(manifest, config, ontology, skipped)
    clips["split"] = assign_splits(clips, config)
    rows = [dict(
        id=clip.id, source_ids=[clip.id], paths=[clip.path], labels=list(clip.labels),
        target=clip.target, target_name=ontology.name(clip.target), parent=None,
        caption=ontology.caption(clip.target, config.caption_template, config.verbose_captions),
        is_mixture=False, split=clip.split,
    ) for clip in clips.itertuples()]
    rows += draw_mixtures(clips[clips.split == "train"], config, ontology)
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    after = Counter(clips.target)
    report = {
        "clips_in_manifest": len(manifest),
        "clips_kept": len(clips),
        "mixtures": config.mixtures,
        "skipped": dict(sorted(skipped.items())),
        "split_rows": dict(Counter(r["split"] for r in rows)),
        "classes": {ontology.name(c): {"id": c, "before": before.get(c, 0), "after": after.get(c, 0)}
                    for c in sorted(set(before) | set(after), key=ontology.name)},
    }
    return table, report


def write_subset(table: pa.Table, report: dict, out_dir: Path) -> None:
    with atomic_path(out_dir / "index.parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    write_json(out_dir / "report.json", report)


def format_report(report: dict) -> str:
    lines = [f"{report['clips_kept']} of {report['clips_in_manifest']} clips kept, "
             f"{report['mixtures']} mixtures; rows per split: {report['split_rows']}"]
    lines += [f"  skipped {count:5d}: {why}" for why, count in report["skipped"].items() if count]
    lines.append(f"  {'before':>6} {'after':>6}  class")
    lines += [f"  {c['before']:6d} {c['after']:6d}  {name}" for name, c in report["classes"].items()]
    return "\n".join(lines)
