"""Stage ``fit_judge``: the frozen judge and the real clips' features -> ``models/judge/``.

Inception-v3 and the aisfx sound embedding are frozen, pretrained and pinned; this stage only
embeds the real clips (training, validation and test splits, at every geometry in
``sample.resolutions``) and fits a logistic regression per domain on them. ``evaluate`` reads
every real-side feature from here, so re-scoring new samples embeds only the samples.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config.core import PARAMS_YAML, load_sections
from pipeline.config.evaluate import EvaluateParams
from pipeline.config.sample import SampleParams
from pipeline.errors import stage_main
from pipeline.evaluation.extractors import Inception
from pipeline.evaluation.references import fit_judge
from pipeline.files import write_json
from pipeline.paths import JUDGE_DIR, METRICS_DIR, RAW_DIR, SHARDS_DIR, SUBSET_DIR

REPORT = METRICS_DIR / "judge.json"


@stage_main("fit_judge")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    args = parser.parse_args(argv)
    params = load_sections(args.params, evaluate=EvaluateParams, sample=SampleParams)
    config = params.evaluate
    judge = fit_judge(SHARDS_DIR, SUBSET_DIR / "index.parquet", RAW_DIR, list(params.sample.resolutions),
                      Inception.from_params(config.inception_weights, config.inception_sha256, config.batch_size))
    judge.save(JUDGE_DIR)
    write_json(REPORT, judge.record)
    print(f"fit_judge: {judge.record['heads_fit']}", file=sys.stderr)


if __name__ == "__main__":
    main()
