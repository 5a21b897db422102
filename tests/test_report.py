"""The listening page ``evaluate`` writes, opened from disk in headless Chromium (Debian's
``chromium`` and ``chromium-driver``, which ``make test`` installs)."""

import math
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from pipeline.evaluation.report import wilson

from conftest import ROOT

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


def browser():
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary and driver:
        return binary, driver
    if os.environ.get("CI"):
        pytest.fail("no chromium or chromedriver: `make test` installs Debian's chromium and chromium-driver")
    pytest.skip("no chromium or chromedriver: run `make test` (it installs Debian's packages, as root)")


@pytest.mark.slow
def test_chromium_plays_every_clip_and_shows_every_image(reproduced_repo):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    binary, driver_path = browser()
    page = reproduced_repo / "metrics" / "report.html"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,2000",
                     "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        WebDriverWait(driver, 120).until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('audio')].every(a => a.readyState >= 1 || a.error)"
            " && [...document.images].every(i => i.complete)"))
        audio = driver.execute_script("return [...document.querySelectorAll('audio')].map("
                                      "a => [a.getAttribute('src'), a.duration, a.error && a.error.code])")
        images = driver.execute_script("return [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        driver.quit()
    assert len(audio) == len(media(page)["audio"]) and len(images) == len(media(page)["img"])
    for src, duration, error in audio:
        assert error is None, f"{src}: the browser could not load it (MediaError {error})"
        assert duration == pytest.approx(sf.info(page.parent / src).duration, abs=0.05), src
    assert all(width > 0 for _, width in images), [src for src, width in images if not width]
    assert errors == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
