"""The wall time of each stage of the last `dvc repro` here (each stage records its own in
metrics/timings/stages/), as a Markdown table in DAG order. Run `make run` in a fresh clone
first for the figure the README quotes.

    python benchmarks/stage_times.py
"""

import json

import yaml

from pipeline.paths import TIMINGS_DIR


def main() -> None:
    with open("dvc.yaml") as f:
        stages = list(yaml.safe_load(f)["stages"])
    print("| stage | wall time (s) |\n|---|---|")
    total = 0.0
    for stage in stages:
        path = TIMINGS_DIR / "stages" / f"{stage}.json"
        if not path.exists():
            print(f"| {stage} | not run here |")
            continue
        seconds = json.loads(path.read_text())["wall_seconds"]
        total += seconds
        print(f"| {stage} | {seconds:.0f} |")
    print(f"| **total** | {total:.0f} ({total / 60:.1f} min) |")


if __name__ == "__main__":
    main()
