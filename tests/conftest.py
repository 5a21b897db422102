import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never reach a model hub or YouTube.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# `make test` runs pytest-xdist workers: each takes its share of the cores (and the stage
# processes it starts inherit it). OpenMP threads spin while they wait, so two workers of
# one thread per core each would fight over every core; set before torch is imported.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    WORKER_THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, str(WORKER_THREADS))

TINY_PROFILE = "tiny"  # configs/tiny.yaml: the whole DAG in seconds
ROOT = Path(__file__).resolve().parent.parent
REPO_FILES = ["dvc.yaml", "pyproject.toml", "requirements-judges.txt", "pipeline", "data/meta", "configs",
              ".dvc/config", ".dvcignore", ".gitignore"]


def run(cmd, cwd, env=None):
    """A command as a user types it in a repository: the venv's dvc/specldm/python first."""
    env = dict(os.environ, **(env or {}))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(cwd)  # the repository's own pipeline/, not this checkout's
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def make_tiny_repo(path: Path) -> Path:
    """A git repository holding this project's pipeline on the tiny profile, one commit."""
    for name in REPO_FILES:
        source, target = ROOT / name, path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    run(["specldm", "profile", TINY_PROFILE], path)
    commit(path, "tiny pipeline", init=True)
    return path


def copy_repo(source: Path, target: Path) -> Path:
    """A copy of a tiny repository, git history, DVC cache and outputs included. The cache's
    files are hard links to the source's: DVC writes a cache file once and never changes it,
    and a copy of them in every test that takes a repository filled CI's disk."""
    cache = source / ".dvc" / "cache"

    def link_cache_copy_rest(file, destination):
        if Path(file).is_relative_to(cache):
            os.link(file, destination)
        else:
            shutil.copy2(file, destination)

    shutil.copytree(source, target, symlinks=True, copy_function=link_cache_copy_rest)
    return target


def dvc_status(repo: Path) -> set[str]:
    """The stages ``dvc status`` reports changed, asked in this process: a ``dvc`` process per
    question costs seconds of imports."""
    from dvc.repo import Repo

    with contextlib.chdir(repo), Repo(".") as dvc:  # from inside, stages are named as the CLI names them
        return set(dvc.status())


def stages_ran(output: str) -> set[str]:
    """The stages a ``dvc repro`` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def commit(path: Path, message: str, init: bool = False) -> None:
    if init:
        run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "add", "-A"], path)
    run(["git", "-c", "user.name=specldm", "-c", "user.email=t@t", "commit", "-qm", message], path)


# A test that uses one of these trains, reproduces a DAG or serves downloads: it belongs to
# the full tier (`make test`), not the fast one a developer runs after each edit (`make test-fast`).
SLOW_FIXTURES = {"tiny_base", "tiny_models", "tiny_judge", "reproduced_repo", "media"}


# `make test` hands modules to its workers in collection order: the module whose first test
# reproduces the tiny repository first, the ones that copy or read it last, so that the
# other worker has work of its own while it is reproduced.
FIRST_MODULES, LAST_MODULES = ("test_dvc_pipeline",), ("test_sharing", "test_evaluate")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the group marks it names nodes by
def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        # under `--dist loadgroup` a module's tests share one worker, so a module fixture
        # (a trained model, a copied repository) is built once
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))

    def position(item):
        name = item.module.__name__
        return 0 if name in FIRST_MODULES else 2 if name in LAST_MODULES else 1
    items.sort(key=position)  # stable: tests keep their order within a module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """Under ``--dist loadgroup`` a worker names each test by its group; with a pytest that xdist
    cannot rename (9.2.0 with xdist 3.8) a module would spread over both workers silently."""
    if node.config.getoption("dist") == "loadgroup" and any("@" not in nodeid for nodeid in ids):
        raise pytest.UsageError("pytest-xdist could not group these tests by module: install the pytest and "
                                "pytest-xdist pinned in pyproject.toml's test extra (`make setup`)")


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory, worker_id):
    """The tiny repository after one ``dvc repro``, its results committed: the DAG and sharing
    tests each take a :func:`copy_repo` of it rather than reproducing it again. Under
    pytest-xdist the first worker to ask reproduces it and the others wait for that one."""
    from filelock import FileLock  # dvc's own dependency

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # this run's folder, shared by its workers
    repo, done = root / "reproduced", root / "reproduced.done"
    with FileLock(str(root / "reproduced.lock")):
        if not done.exists():
            make_tiny_repo(repo)
            run(["dvc", "repro"], repo)
            commit(repo, "results")
            done.touch()
    return repo


@pytest.fixture(scope="session")
def ontology():
    from pipeline.ontology import Ontology
    return Ontology.load()


def tiny_params(**overrides):
    from pipeline.params import parse, profile

    raw = profile(TINY_PROFILE).to_dict()
    for group, values in overrides.items():
        raw[group].update(values)
    return parse(raw)


def build_subset(root, ontology, **overrides):
    """acquire (once per root) and subset into ``root/raw`` and ``root/subset``."""
    from pipeline.sources.manifest import read_manifest
    from pipeline.sources.subset import build_index, write_subset
    from pipeline.stages.acquire import acquire

    params = tiny_params(**overrides)
    if not (root / "raw" / "manifest.parquet").exists():
        acquire(params, root / "raw", ontology)
    table, report = build_index(read_manifest(root / "raw" / "manifest.parquet"), params.subset, ontology)
    write_subset(table, report, root / "subset")
    return params


def render_into(root, params):
    from pipeline.stages.render import render

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
    from pipeline.stages.pretrain import pretrain

    path = tmp_path_factory.mktemp("base") / "pretrained"
    pretrain(tiny_shards[1], path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_shards, tiny_base):
    """Fine-tuned model (6 steps, with checkpoints), evaluator and vocoder on the tiny shards."""
    from pipeline.stages.train import train
    from pipeline.stages.train_evaluator import train_evaluator
    from pipeline.stages.train_vocoder import train_vocoder

    shards, params = tiny_shards
    root = tmp_path_factory.mktemp("models")
    train(params, shards, tiny_base, root / "finetuned", root / "checkpoints", root / "live")
    report = train_evaluator(params, shards, root / "evaluator")
    train_vocoder(params, *tiny_audio(shards), root / "vocoder", root / "vocoder_checkpoints")
    return {"pretrained": tiny_base, "finetuned": root / "finetuned",
            "checkpoints": root / "checkpoints", "evaluator": root / "evaluator",
            "evaluator_report": report, "vocoder": root / "vocoder"}


@pytest.fixture(scope="session")
def tiny_judge(tmp_path_factory, tiny_shards):
    """The frozen judge fitted on the tiny shards (its real features at 64x64 and 64x400)."""
    from pipeline.evaluation.extractors import Inception
    from pipeline.evaluation.references import fit_judge

    shards, params = tiny_shards
    path = tmp_path_factory.mktemp("judge") / "judge"
    judge = fit_judge(*tiny_audio(shards), list(params.sample.resolutions), Inception.from_params("", "", 16))
    judge.save(path)
    return path


def tiny_audio(shards: Path) -> tuple[Path, Path, Path]:
    """(shards, subset index, raw clips) of a tiny dataset, as train_vocoder and evaluate take them."""
    return shards, shards.parent / "subset" / "index.parquet", shards.parent / "raw"


def read_clip(raw_dir: Path, clip_id: str):
    """A clip's samples (mono float32) from the clip shards, found through the manifest."""
    from pipeline.sources.clip_shards import ClipStore
    from pipeline.sources.manifest import read_manifest

    manifest = read_manifest(raw_dir / "manifest.parquet").set_index("id")
    audio, _ = ClipStore(raw_dir).audio(manifest.path[clip_id], clip_id)
    return audio[:, 0]


def audio_bytes(audio, sample_rate=16_000, **format):
    """What soundfile writes for ``audio``, FLAC unless ``format`` says otherwise."""
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, **({"format": "FLAC"} | format))
    return buffer.getvalue()


def replace_clips(raw_dir: Path, replacements: dict) -> None:
    """Put other bytes in place of clips in their shards (None: take the clip out), recorded
    with their digests, as if acquire had written them."""
    import pyarrow.parquet as pq

    from pipeline.sources.clip_shards import write_shard

    for shard in (raw_dir / "clips").glob("part-*.parquet"):
        rows = pq.read_table(shard, columns=["id", "flac"]).to_pylist()
        write_shard(shard, [(r["id"], replacements.get(r["id"], r["flac"])) for r in rows
                            if replacements.get(r["id"], b"") is not None])


def open_in_chromium(page: Path, screenshot: Path) -> tuple[list, list, list]:
    """A page opened from disk in headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
    which ``make test`` installs) once every player has read its file's header: ``[src, duration,
    MediaError code]`` of each ``<audio>``, ``[src, naturalWidth]`` of each image, the console's
    errors; a screenshot of it goes to ``screenshot``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        if os.environ.get("CI"):
            pytest.fail("no chromium or chromedriver: `make test` installs Debian's chromium and chromium-driver")
        pytest.skip("no chromium or chromedriver: run `make test` (it installs Debian's packages, as root)")
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
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    return audio, images, errors
