"""The README is a front page, and the tables in docs/ that mirror code cannot drift from it."""

import re
from pathlib import Path

import yaml

from pipeline.params import Params
from pipeline.sources.clips import ClipRules
from pipeline.sources.download import ERROR_KINDS, DownloadSettings, Section, ytdlp_options

from conftest import ROOT

README = ROOT / "README.md"
SOURCES = ROOT / "docs" / "sources.md"
PARAMETERS = ROOT / "docs" / "parameters.md"


def generated_block(path: Path, name: str) -> str:
    """The text between ``<!-- generated: name -->`` (or ``checked:``, for a table written by
    hand) and ``<!-- end: name -->``."""
    match = re.search(rf"<!-- (?:generated|checked): {name} -->\n(.*?)<!-- end: {name} -->", path.read_text(), re.S)
    assert match, f"{path} has no generated block {name!r}"
    return match.group(1)


def error_kinds_table() -> str:
    lines = ["| `error_kind` | retried | what it means |", "|---|---|---|"]
    lines += [f"| `{kind}` | {'yes' if retried else 'no'} | {meaning} |"
              for kind, (retried, meaning) in ERROR_KINDS.items()]
    return "\n".join(lines) + "\n"


def ytdlp_options_block() -> str:
    settings = DownloadSettings("<url_template>", "<clips>", "<work>", ClipRules(16_000, 10.0, "pad", "split", -60.0),
                                "<imageio-ffmpeg binary>", socket_timeout=30.0, cookies="<download.cookies>",
                                proxy="<download.proxy>")
    options = ytdlp_options(Section("id", "<ytid>", 10.0, 20.0, "f.flac"), settings, Path("<work>/<id>"), None)
    shown = dict(options, download_ranges="download_range_func(None, [(start, end)])",
                 logger="<keeps yt-dlp's messages for the manifest>")
    body = "\n".join(f"{key}: {value!r}" for key, value in shown.items())
    return f"```python\n{body}\n```\n"


def test_readme_is_a_front_page():
    assert len(README.read_bytes()) <= 10_000
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in stages:
        assert f"`{stage}`" in README.read_text(), f"README does not name the stage {stage}"
    for page in re.findall(r"\]\((docs/[\w.]+)\)", README.read_text()):
        assert (ROOT / page).is_file(), page


def test_the_error_kinds_table_is_the_code():
    assert generated_block(SOURCES, "error kinds") == error_kinds_table(), \
        f"docs/sources.md's error kinds differ from the code; the table should read:\n{error_kinds_table()}"


def test_the_ytdlp_options_are_the_code():
    assert generated_block(SOURCES, "yt-dlp options") == ytdlp_options_block(), \
        f"docs/sources.md's yt-dlp options differ from the code; they should read:\n{ytdlp_options_block()}"


def test_the_parameter_table_covers_every_key_and_names_no_other():
    keys = {f"{group}.{key}" for group, values in Params().to_dict().items() for key in values}
    table = generated_block(PARAMETERS, "parameters")
    named = set(re.findall(r"`(\w+\.\w+)`", table))
    wildcards = set(re.findall(r"`(\w+)\.\*`", table))
    assert named <= keys, f"docs/parameters.md names keys that do not exist: {sorted(named - keys)}"
    uncovered = sorted(k for k in keys if k not in named and k.split(".")[0] not in wildcards)
    assert not uncovered, f"docs/parameters.md does not cover {uncovered}"


def shape(text: str) -> str:
    """A table with every number replaced: what stays is its rows, columns and keys."""
    return re.sub(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", text)


def test_the_readme_shows_the_results_table():
    """The README's table has the layout of the ``metrics/table.md`` that evaluate writes; its
    digits are the committed run's, and another CPU's run moves them (within their intervals),
    so they are not compared."""
    table = shape((ROOT / "metrics" / "table.md").read_text().strip())
    assert table in shape(README.read_text()), \
        "README's results table has another layout than metrics/table.md; paste the new one in"


def test_the_readme_shows_the_seeds_table():
    """The README's spread over training seeds is the first table of the committed
    ``metrics/seeds.md`` (``make seeds``): every target's score, per seed and as mean ± sd."""
    seeds = (ROOT / "metrics" / "seeds.md").read_text().split("\n\n")[0].strip()
    assert shape(seeds) in shape(README.read_text()), \
        "README's table over seeds has another layout than metrics/seeds.md's first; paste the new one in"
