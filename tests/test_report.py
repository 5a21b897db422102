"""The listening page ``evaluate`` writes, opened from disk in headless Chromium (Debian's
``chromium`` and ``chromium-driver``, which ``make test`` installs)."""

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from pipeline.errors import PipelineError
from pipeline.evaluation.report import blind_page, tally, wilson

from conftest import ROOT, open_in_chromium

ARTIFACTS = ROOT / "test-artifacts"  # the browser's screenshot of the page, for a person to look at


def test_wilson_interval_holds_the_proportion_and_narrows_with_more_samples():
    low, high = wilson(3, 4)
    assert low < 0.75 < high and 0 <= low and high <= 1
    assert wilson(30, 40)[1] - wilson(30, 40)[0] < high - low
    assert wilson(0, 5)[0] == 0 and wilson(5, 5)[1] == 1
    assert all(math.isnan(x) for x in wilson(0, 0))


def media(page: Path) -> dict[str, list[Path]]:
    text = page.read_text()
    return {tag: [(page.parent / src).resolve() for src in re.findall(rf'<{tag} [^>]*src="([^"]+)"', text)]
            for tag in ("img", "audio")}


@pytest.mark.slow
def test_the_page_shows_every_class_and_its_files_exist(reproduced_repo):
    page = reproduced_repo / "metrics" / "report.html"
    files = media(page)
    text = page.read_text()
    assert text.count("<h2 ") == pd.read_csv(reproduced_repo / "metrics" / "per_class.csv").class_id.nunique()
    assert files["img"] and files["audio"] and all(p.is_file() for p in files["img"] + files["audio"])
    assert 'class="seam"' in text and 'class="region"' in text  # long clips' seams, in-painted regions
    assert "http://" not in text and "https://" not in text  # nothing fetched from a network


@pytest.mark.slow
def test_chromium_plays_every_clip_and_shows_every_image(reproduced_repo):
    page = reproduced_repo / "metrics" / "report.html"
    audio, images, errors = open_in_chromium(page, ARTIFACTS / "report.png")
    assert len(audio) == len(media(page)["audio"]) and len(images) == len(media(page)["img"])
    for src, duration, error in audio:
        assert error is None, f"{src}: the browser could not load it (MediaError {error})"
        assert duration == pytest.approx(sf.info(page.parent / src).duration, abs=0.05), src
    assert all(width > 0 for _, width in images), [src for src, width in images if not width]
    assert errors == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_blind_test_hides_which_model_made_each_clip_and_tallies_the_answers(reproduced_repo, tmp_path):
    page = tmp_path / "blind.html"
    held = blind_page(3, 0, page, "64x64", reproduced_repo)
    key = json.loads(held["key"].read_text())
    text = page.read_text()
    assert held["trials"] == len(key["trials"]) == 6 and text.count('class="trial"') == 6
    assert "finetuned" not in text and "pretrained" not in text  # nothing on the page gives the model away
    right = {trial: truth["finetuned"] if truth["kind"] == "pair" else truth["class"]
             for trial, truth in key["trials"].items()}
    wrong = {trial: {"A": "B", "B": "A"}.get(answer, "none of them") for trial, answer in right.items()}
    for answers, expected in ((right, 1.0), (wrong, 0.0)):
        (tmp_path / "answers.json").write_text(json.dumps({"page": "blind.html", "answers": answers}))
        scores = tally(tmp_path / "answers.json", held["key"])
        assert scores["finetuned_preferred"]["value"] == scores["named_class"]["value"] == expected
        assert scores["named_class"]["answers"] == 3 and scores["finetuned_preferred"]["chance"] == 0.5
    (tmp_path / "answers.json").write_text(json.dumps({"page": "other.html", "answers": right}))
    with pytest.raises(PipelineError, match="is the key of 'blind.html'"):
        tally(tmp_path / "answers.json", held["key"])
