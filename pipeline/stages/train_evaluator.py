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

from pipeline.audio.shards import read_single_clips, read_spec, shard_files
from pipeline.config.core import PARAMS_YAML, Sections, load_sections
from pipeline.config.evaluator import EvaluatorParams
from pipeline.errors import stage_main
from pipeline.files import write_json
from pipeline.models import advice_when_out_of_memory
from pipeline.models.evaluator import Evaluator, train_classifier
from pipeline.paths import EVALUATOR_DIR, SHARDS_DIR

METRICS = Path("metrics/evaluator.json")
COLUMNS = ["log_mel", "target", "target_name"]


def train_evaluator(params: Sections, shards: Path = SHARDS_DIR,
                    out_dir: Path = EVALUATOR_DIR) -> dict:
    config = params.evaluator
    spec = read_spec(shard_files("train", shards)[0])
    train = read_single_clips("train", COLUMNS, shards)
    names = dict(zip(train["target"], train["target_name"]))
    class_ids = sorted(names)
    index = {c: i for i, c in enumerate(class_ids)}
    with advice_when_out_of_memory(f"at evaluator.batch_size={config.batch_size}, lower it"):
        model = train_classifier(train["log_mel"], np.array([index[t] for t in train["target"]]),
                                 len(class_ids), spec, config.epochs, config.batch_size,
                                 config.learning_rate, config.seed)
    evaluator = Evaluator(model, class_ids, [names[c] for c in class_ids], spec)
    evaluator.save(out_dir)
    test = read_single_clips("test", COLUMNS, shards)
    known = [i for i, t in enumerate(test["target"]) if t in index]
    predicted = evaluator.predict(test["log_mel"][known])
    truth = np.array([index[test["target"][i]] for i in known])
    return {"test_accuracy": float((predicted == truth).mean()) if known else float("nan"),
            "classes": len(class_ids), "train_rows": len(train["target"]), "test_rows": len(known)}


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
