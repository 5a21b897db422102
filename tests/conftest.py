import os

import pytest

# Tests never reach a model hub or YouTube.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A few seconds of CPU per stage: 4 classes x 6 clips, 64 px images, a tiny model.
TINY_PARAMS = {
    "source": {"num_classes": 4, "clips_per_class": 6, "two_label_fraction": 0.0},
    "subset": {"mixtures": 6, "min_per_class": 2},
    "render": {"image_size": 64, "shard_rows": 8, "row_group_rows": 4, "workers": 2},
    "model": {"unet_channels": [16, 32], "max_tokens": 16},
    "pretrain": {"vae_steps": 2, "unet_steps": 2, "batch_size": 4, "crop_size": 32},
    "train": {"steps": 6, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 2,
              "keep_checkpoints": 10, "log_every": 1},
    "spectrogram": {"griffin_lim_iters": 4},
    "evaluator": {"epochs": 15, "batch_size": 8},
    "sample": {"resolutions": ["64x64", "64x400"], "per_class": 2, "steps": 2, "wavs_per_class": 1,
               "checkpoint_per_class": 1},
}


@pytest.fixture(scope="session")
def ontology():
    from pipeline.ontology import Ontology
    return Ontology.load()


def tiny_params(**overrides):
    from pipeline.params import parse

    raw = {group: dict(values) for group, values in TINY_PARAMS.items()}
    for group, values in overrides.items():
        raw.setdefault(group, {}).update(values)
    return parse(raw)


def build_subset(root, ontology, **overrides):
    """acquire (once per root) and subset into ``root/raw`` and ``root/subset``."""
    from pipeline.acquire import acquire
    from pipeline.manifest import read_manifest
    from pipeline.subset import build_index, write_subset

    params = tiny_params(**overrides)
    if not (root / "raw" / "manifest.parquet").exists():
        acquire(params, root / "raw", ontology)
    table, report = build_index(read_manifest(root / "raw" / "manifest.parquet"), params.subset, ontology)
    write_subset(table, report, root / "subset")
    return params


def render_into(root, params):
    from pipeline.render import render

    return render(params, root / "subset" / "index.parquet", root / "raw", root / "shards")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, ontology):
    """Rendered shards of the tiny dataset, shared read-only by the model tests."""
    root = tmp_path_factory.mktemp("tiny")
    params = build_subset(root, ontology)
    render_into(root, params)
    return root / "shards", params


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_shards):
    """A tiny image-pretrained base pipeline (a few steps: the format, not the quality)."""
    from pipeline.pretrain import pretrain

    path = tmp_path_factory.mktemp("base") / "pretrained"
    pretrain(tiny_shards[1], path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_shards, tiny_base):
    """Fine-tuned model (6 steps, with checkpoints) and evaluator on the tiny shards."""
    from pipeline.train import train
    from pipeline.train_evaluator import train_evaluator

    shards, params = tiny_shards
    root = tmp_path_factory.mktemp("models")
    train(params, shards, tiny_base, root / "finetuned", root / "checkpoints", root / "live")
    report = train_evaluator(params, shards, root / "evaluator")
    return {"pretrained": tiny_base, "finetuned": root / "finetuned",
            "checkpoints": root / "checkpoints", "evaluator": root / "evaluator",
            "evaluator_report": report}
