import pytest

from pipeline.ontology import META_DIR, OntologyError, read_class_labels
from pipeline.sources.segments import read_segments


def test_counts_from_the_official_files(ontology):
    assert len(ontology) == 632
    assert len(ontology.trainable_ids) == 527 == len(read_class_labels())
    assert sum(c.abstract for c in ontology.classes.values()) == 23
    assert sum(c.blacklisted for c in ontology.classes.values()) == 67


def test_multi_parent_classes(ontology):
    cowbell = ontology.resolve("Cowbell")
    assert cowbell == "/m/0239kh"
    assert {ontology.name(p) for p in ontology.parents(cowbell)} == {
        "Bell", "Percussion", "Cattle, bovinae"}
    ancestors = {ontology.name(a) for a in ontology.ancestors(cowbell)}
    assert {"Musical instrument", "Music", "Animal", "Sounds of things"} <= ancestors


def test_id_name_lookup_and_depth(ontology):
    dial = ontology.resolve("dial TONE")
    assert dial == ontology.resolve("/m/015jpf")
    assert ontology.name(dial) == "Dial tone"
    assert ontology.depth(ontology.resolve("Sounds of things")) == 0
    assert ontology.depth(dial) == 3  # Sounds of things > Alarm > Telephone > Dial tone
    assert ontology.parents(ontology.resolve("Music")) == ()


def test_restrictions_and_targets(ontology):
    assert ontology["/m/0dgw9r"].abstract and not ontology.is_target("/m/0dgw9r")  # Human sounds
    natural = ontology.resolve("Natural sounds")
    assert ontology[natural].blacklisted and not ontology.is_target(natural)
    assert ontology.is_target(ontology.resolve("Church bell"))


def test_unknown_labels_suggest_close_names(ontology):
    with pytest.raises(OntologyError, match="did you mean 'Dial tone'"):
        ontology.resolve("Dial tones")
    with pytest.raises(OntologyError, match="unknown AudioSet class id"):
        ontology["/m/nope"]


def test_captions(ontology):
    dial = ontology.resolve("Dial tone")
    assert ontology.caption(dial) == "a spectrogram of the sound of Dial tone"
    assert ontology.caption(dial, verbose=True) == (
        "a spectrogram of the sound of Dial tone, a kind of Telephone, a kind of Alarm, "
        "a kind of Sounds of things")
    assert ontology.caption(dial, template="{name}!") == "Dial tone!"


def test_balanced_and_eval_segments(ontology):
    balanced = read_segments(META_DIR / "balanced_train_segments.csv")
    assert len(balanced) == 22_160
    first = balanced[0]
    assert (first.ytid, first.start_seconds, first.end_seconds) == ("--PJHxphWEs", 30.0, 40.0)
    assert first.labels == ("/m/09x0r", "/t/dd00088")
    assert {label for s in balanced for label in s.labels} <= set(ontology.trainable_ids)
    assert len(read_segments(META_DIR / "eval_segments.csv")) == 20_371


HEADER = ("# Segments csv created today\n"
          "# num_ytids={n}, num_segs={n}, num_unique_labels=1, num_positive_labels={n}\n"
          "# YTID, start_seconds, end_seconds, positive_labels\n")


def test_segment_header_counts_are_verified(tmp_path):
    path = tmp_path / "segments.csv"
    path.write_text(HEADER.format(n=2) + 'aaaaaaaaaaa, 0.000, 10.000, "/m/09x0r"\n')
    with pytest.raises(OntologyError, match="truncated"):
        read_segments(path)


@pytest.mark.parametrize("row, message", [
    ('aaaaaaaaaaa, 0.000, 10.000\n', "expected 4 fields"),
    ('aaaaaaaaaaa, zero, 10.000, "/m/09x0r"\n', "start/end are not numbers"),
    ('aaaaaaaaaaa, 10.000, 0.000, "/m/09x0r"\n', "bad segment"),
    ('aaaaaaaaaaa, 0.000, 10.000, ""\n', "no labels"),
])
def test_malformed_segment_rows(tmp_path, row, message):
    path = tmp_path / "segments.csv"
    path.write_text(HEADER.format(n=1) + row)
    with pytest.raises(OntologyError, match=f"segments.csv:4: {message}"):
        read_segments(path)
