"""Stage ``train_evaluator``: an audio classifier on the real training mels -> ``models/evaluator/``.

It learns the target class of every single-clip training row (mixtures are left out:
their target is a parent class, not a sound of its own) and reports its accuracy on
the test split in ``metrics/evaluator.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.audio.shards import read_spec, shard_files, single_clip_batches
from pipeline.config.core import PARAMS_YAML, Sections, load_sections
from pipeline.config.evaluator import EvaluatorParams
from pipeline.errors import stage_main
from pipeline.files import write_json
from pipeline.models import advice_when_out_of_memory
from pipeline.models.evaluator import Evaluator, train_classifier
from pipeline.paths import EVALUATOR_DIR, SHARDS_DIR
from pipeline.training.rows import RowFile

METRICS = Path("metrics/evaluator.json")
COLUMNS = ["log_mel", "target", "target_name"]


def train_evaluator(params: Sections, shards: Path = SHARDS_DIR,
                    out_dir: Path = EVALUATOR_DIR) -> dict:
    config = params.evaluator
    spec = read_spec(shard_files("train", shards)[0])
    log_mels, targets, names = RowFile((spec.n_mels, spec.n_frames)), [], {}
    for batch in single_clip_batches("train", COLUMNS, shards):
        log_mels.append(torch.from_numpy(batch["log_mel"]))
        targets += batch["target"]
        names.update(zip(batch["target"], batch["target_name"]))
    class_ids = sorted(names)
    index = {c: i for i, c in enumerate(class_ids)}
    with advice_when_out_of_memory(f"at evaluator.batch_size={config.batch_size}, lower it"):
        model = train_classifier(log_mels, np.array([index[t] for t in targets]), len(class_ids), spec,
                                 config.epochs, config.batch_size, config.learning_rate, config.seed)
    evaluator = Evaluator(model, class_ids, [names[c] for c in class_ids], spec)
    evaluator.save(out_dir)
    hits = []
    for batch in single_clip_batches("test", COLUMNS, shards):
        known = [i for i, t in enumerate(batch["target"]) if t in index]
        if known:
            predicted = evaluator.predict(batch["log_mel"][known])
            hits += list(predicted == np.array([index[batch["target"][i]] for i in known]))
    return {"test_accuracy": float(np.mean(hits)) if hits else float("nan"),
            "classes": len(class_ids), "train_rows": len(targets), "test_rows": len(hits)}


@stage_main("train_evaluator")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    args = parser.parse_args(argv)
    report = train_evaluator(load_sections(args.params, evaluator=EvaluatorParams))
    write_json(METRICS, report)
    print(json.dumps(report, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
