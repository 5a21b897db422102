from collections import Counter

import numpy as np
import torch

from pipeline.audio.spectrogram import SpectrogramSpec, waveform_to_log_mel
from pipeline.params import SourceParams
from pipeline.sources.synthetic import CATALOGUE, plan_synthetic, render_clip

SPEC = SpectrogramSpec()
DEFAULT = SourceParams()


def test_default_classes_are_real_targets_sharing_parents(ontology):
    chosen = CATALOGUE[:DEFAULT.num_classes]
    assert len(chosen) >= 24
    ids = [ontology.resolve(c.name) for c in chosen]
    assert len(set(ids)) == len(ids)
    assert all(ontology.is_target(i) for i in ids)
    siblings = Counter(p for i in ids for p in ontology.parents(i))
    shared = [p for p, n in siblings.items() if n >= 2 and not ontology[p].abstract]
    assert len(shared) >= 6, [ontology.name(p) for p in shared]


def test_clips_are_deterministic_and_vary_within_a_class():
    cls = CATALOGUE[0]
    a = render_clip(cls, np.random.default_rng((0, 0, 0)), 16_000, 10.0)
    b = render_clip(cls, np.random.default_rng((0, 0, 0)), 16_000, 10.0)
    c = render_clip(cls, np.random.default_rng((0, 0, 1)), 16_000, 10.0)
    assert a.dtype == np.float32 and a.shape == (160_000,)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_every_class_is_audible_bounded_and_varied():
    for cls in CATALOGUE:
        clips = [render_clip(cls, np.random.default_rng((7, k)), 16_000, 10.0) for k in range(2)]
        for clip in clips:
            assert np.abs(clip).max() <= 0.99, cls.name
            assert np.abs(clip).max() > 10 ** (-30 / 20), f"{cls.name}: too quiet"
            assert np.count_nonzero(clip) == len(clip), f"{cls.name}: digital silence"
        mels = [waveform_to_log_mel(torch.from_numpy(c), SPEC) for c in clips]
        assert (mels[0] - mels[1]).abs().mean() > 1.0, f"{cls.name}: no variation"


def test_classes_differ_from_each_other():
    """Mean log-mel profiles are distinct per class (the generator has something to learn)."""
    profiles = []
    for cls in CATALOGUE:
        clip = render_clip(cls, np.random.default_rng((3, 0)), 16_000, 10.0)
        profiles.append(waveform_to_log_mel(torch.from_numpy(clip), SPEC).mean(dim=1))
    stacked = torch.stack(profiles)
    distances = torch.cdist(stacked, stacked)
    distances.fill_diagonal_(float("inf"))
    assert distances.min() > 1.0


def test_plan_labels_some_clips_twice_with_other_families(ontology):
    plan = plan_synthetic(SourceParams(two_label_fraction=0.3), ontology)
    assert len(plan) == DEFAULT.num_classes * DEFAULT.clips_per_class
    doubled = [clip for clip in plan if clip.overlay is not None]
    assert 0.15 * len(plan) < len(doubled) < 0.45 * len(plan)
    for clip in doubled:
        ours = set(ontology.parents(ontology.resolve(clip.cls.name)))
        theirs = set(ontology.parents(ontology.resolve(clip.overlay.name)))
        assert not ours & theirs
    assert not any(c.overlay for c in plan_synthetic(SourceParams(two_label_fraction=0.0), ontology))
