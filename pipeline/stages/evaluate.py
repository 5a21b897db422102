"""Stage ``evaluate``: the report's Table 3.1 as DVC metrics, every score with a 95% interval.

It scores files only, through frozen judges nobody here trained (``models/judge``, made by
``fit_judge`` from the real clips). For each sample set ``data/samples/<model>/<H>x<W>``:

* ``fid`` / ``kid``: Inception-v3 (the report's FID) against the real test clips rendered at
  the same H x W;
* ``accuracy``: how often the frozen image judge (logistic regression on Inception features,
  fitted on the training clips at that geometry) hears the prompted class;
* ``accuracy_audio`` / ``fad`` / ``kad``: the set's WAVs through the aisfx sound embedding:
  the audio judge's accuracy, and Frechet / kernel distances to the training clips' audio;
  ``vocoder.<name>.*`` the same for each vocoder (the one the sample stage did not use
  re-voices ``evaluate.revocode_per_class`` samples per class).

Beside them the real clips: ``accuracy.real.<H>x<W>`` and ``accuracy_audio.real`` (ceilings),
``fad.real`` / ``kad.real`` (test against training audio: the floor); the fine-tuned VAE's
redrawing of the test clips (``reconstruction.vae.*``), each vocoder resynthesising them
(``vocoder.<name>.{mel_l1_db, mrstft, accuracy}``), long and in-painted clips.

Writes ``metrics/metrics.json`` (values) and ``metrics/intervals.json`` (their bootstrap 95%
intervals), ``metrics/feature_extractor.json``, ``metrics/table.md``, ``metrics/per_class.csv``,
``metrics/fid_by_checkpoint.csv`` and the grids; timings go to ``metrics/timings/``. Last, the
listening page, ``metrics/report.html``, with the media it plays that ``sample`` did not write
in ``metrics/report/`` (:mod:`pipeline.evaluation.report`).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.audio.shards import read_spec, shard_files
from pipeline.config.core import PARAMS_YAML, load_sections
from pipeline.config.evaluate import EvaluateParams
from pipeline.config.sample import SampleParams
from pipeline.errors import stage_main
from pipeline.evaluation.report import REPORT_DIR, REPORT_PAGE, build_report
from pipeline.evaluation.scoring import evaluate
from pipeline.paths import METRICS_DIR, RAW_DIR, SAMPLES_DIR, SHARDS_DIR, SUBSET_DIR, VOCODER_DIR


@stage_main("evaluate")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    args = parser.parse_args(argv)
    params = load_sections(args.params, evaluate=EvaluateParams, sample=SampleParams)
    evaluate(params)
    print((METRICS_DIR / "table.md").read_text(), file=sys.stderr)
    spec = read_spec(shard_files("train", SHARDS_DIR)[0])
    held = build_report(SAMPLES_DIR, SHARDS_DIR, SUBSET_DIR / "index.parquet", RAW_DIR, METRICS_DIR,
                        list(params.sample.resolutions), spec, VOCODER_DIR, REPORT_DIR, REPORT_PAGE)
    print(f"listening page: {REPORT_PAGE} ({json.dumps(held)})", file=sys.stderr)


if __name__ == "__main__":
    main()
