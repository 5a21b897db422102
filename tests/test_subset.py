from collections import Counter

import pandas as pd
import pytest

from pipeline.params import SubsetParams
from pipeline.sources.subset import build_index, choose_target, mixture_caption, pluralise


def manifest(rows):
    """Hand-built manifest rows: (id, [label names or ids], status)."""
    return pd.DataFrame([dict(id=i, source="local", origin=None, start_seconds=0.0, end_seconds=10.0,
                              labels=labels, path=f"clips/{i}.flac", status=status, error_kind=None,
                              error=None, attempts=1, bytes=1, duration_seconds=10.0,
                              sample_rate=16000, updated_at=None)
                         for i, labels, status in rows])


def family(ontology, counts: dict[str, int], extra=()):
    rows = [(f"{name[:4]}{k:03d}", [ontology.resolve(name)], "ok")
            for name, n in counts.items() for k in range(n)]
    return manifest(rows + list(extra))


def index_frame(table):
    return table.to_pandas()


def test_caps_and_minimums(ontology):
    clips = family(ontology, {"Dial tone": 30, "Busy signal": 8, "Ringtone": 12})
    table, report = build_index(clips, SubsetParams(max_per_class=10, min_per_class=5, mixtures=0),
                                ontology)
    counts = Counter(index_frame(table).target_name)
    assert counts == {"Dial tone": 10, "Busy signal": 8, "Ringtone": 10}
    assert report["skipped"]["over max_per_class=10"] == 22
    assert report["classes"]["Dial tone"] == {"id": "/m/015jpf", "before": 30, "after": 10}


def test_small_classes_roll_up_to_an_ancestor_or_drop(ontology):
    clips = family(ontology, {"Dial tone": 6, "Busy signal": 2, "Ringtone": 3})
    rolled, _ = build_index(clips, SubsetParams(min_per_class=5, mixtures=0), ontology)
    assert Counter(index_frame(rolled).target_name) == {"Dial tone": 6, "Telephone": 5}
    dropped, report = build_index(clips, SubsetParams(min_per_class=5, mixtures=0, rollup=False), ontology)
    assert Counter(index_frame(dropped).target_name) == {"Dial tone": 6}
    assert report["skipped"]["class below min_per_class=5"] == 5


def test_target_is_the_rarest_then_most_specific_label(ontology):
    dial, telephone, rain = (ontology.resolve(n) for n in ("Dial tone", "Telephone", "Rain"))
    frequency = Counter({dial: 10, telephone: 10, rain: 3})
    assert choose_target([telephone, dial], frequency, ontology) == dial  # tie: deeper wins
    assert choose_target([dial, rain], frequency, ontology) == rain
    abstract = ontology.resolve("Human sounds")
    assert choose_target([abstract], frequency, ontology) is None


def test_bad_rows_are_counted(ontology):
    clips = family(ontology, {"Dial tone": 6}, extra=[
        ("bad-status", [ontology.resolve("Dial tone")], "failed"),
        ("bad-label", ["/m/not-a-class"], "ok"),
        ("abstract", [ontology.resolve("Human sounds")], "ok"),
    ])
    table, report = build_index(clips, SubsetParams(mixtures=0), ontology)
    assert len(table) == 6
    assert report["skipped"]["status not ok"] == 1
    assert report["skipped"]["unknown label"] == 1
    assert report["skipped"]["no target label (abstract/blacklisted/untrainable)"] == 1


def test_splits_are_stratified_without_leakage(ontology):
    clips = family(ontology, {"Dial tone": 20, "Busy signal": 20, "Rain": 20, "Stream": 20})
    table, _ = build_index(clips, SubsetParams(mixtures=50, val_fraction=0.1, test_fraction=0.2), ontology)
    frame = index_frame(table)
    singles = frame[~frame.is_mixture]
    assert singles.id.is_unique
    per_class = singles.groupby(["target_name", "split"]).size().unstack()
    assert (per_class["test"] == 4).all() and (per_class["val"] == 2).all()
    held_out = set(singles[singles.split != "train"].id)
    mixtures = frame[frame.is_mixture]
    assert set(mixtures.split) == {"train"}
    assert not held_out & {s for ids in mixtures.source_ids for s in ids}


def test_mixtures_pair_siblings_under_the_named_parent(ontology):
    clips = family(ontology, {"Dial tone": 10, "Busy signal": 10, "Rain": 10, "Stream": 10,
                              "Church bell": 10})
    table, _ = build_index(clips, SubsetParams(mixtures=40, seed=3), ontology)
    frame = index_frame(table)
    target_of = dict(zip(frame.id, frame.target))
    mixtures = frame[frame.is_mixture]
    assert len(mixtures) == 40 and mixtures.id.is_unique
    for row in mixtures.itertuples():
        a, b = (target_of[s] for s in row.source_ids)
        assert a != b
        assert row.parent in ontology.parents(a) and row.parent in ontology.parents(b)
        parent = ontology.name(row.parent)
        assert row.caption == (f"a mel spectrogram of the sound of multiple overlapping {parent}s, "
                               f"including {ontology.name(a)} and {ontology.name(b)}")
    assert set(mixtures.target_name) == {"Telephone", "Water"}  # Church bell has no sibling here
    again, _ = build_index(clips, SubsetParams(mixtures=40, seed=3), ontology)
    assert again.equals(table)


def test_mixtures_need_siblings(ontology):
    clips = family(ontology, {"Dial tone": 10, "Rain": 10})
    with pytest.raises(ValueError, match="share a non-abstract parent"):
        build_index(clips, SubsetParams(mixtures=5), ontology)


def test_captions(ontology):
    clips = family(ontology, {"Dial tone": 6})
    table, _ = build_index(clips, SubsetParams(mixtures=0, verbose_captions=True,
                                               caption_template="{name}"), ontology)
    assert set(index_frame(table).caption) == {
        "Dial tone, a kind of Telephone, a kind of Alarm, a kind of Sounds of things"}
    assert pluralise("Bell") == "Bells" and pluralise("Noise") == "Noises"
    assert pluralise("Cattle, bovinae") == "Cattles" and pluralise("Fly") == "Flies"
    assert pluralise("Bus") == "Buses"
    assert mixture_caption("{parent}s: {a}+{b}", "Clock", "Tick", "Tick-tock") == "Clocks: Tick+Tick-tock"
