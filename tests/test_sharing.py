"""Reproducible and shareable: remotes, branch comparison and determinism, as a team uses them.

The tiny repository conftest reproduced once is copied here (module fixture); each test
clones or extends the copy.
"""

import filecmp
import json

import pytest
import yaml

from conftest import ROOT, copy_repo, open_in_chromium, run, stages_ran

pytestmark = pytest.mark.slow  # every test here reproduces or trains

SCORES = ("fid", "kid", "accuracy", "accuracy_audio", "fad", "kad")
SCORES += tuple(f"vocoder.{v}.{name}" for v in ("griffin_lim", "neural") for name in ("fad", "kad", "accuracy_audio"))
TABLE_KEYS = {f"{name}.{model}.{resolution}" for name in SCORES
              for model in ("pretrained", "finetuned") for resolution in ("64x64", "64x400")}
# long clips and in-painting are drawn with the chosen guidance scale too
TABLE_KEYS |= {"longform.accuracy", "longform.seam_ratio", "inpaint.accuracy", "inpaint.outside_mae_db"}


@pytest.fixture(scope="module")
def origin(reproduced_repo, tmp_path_factory):
    return copy_repo(reproduced_repo, tmp_path_factory.mktemp("sharing") / "origin")


def fresh_clone(origin, path, remote_args, env=None):
    run(["git", "clone", "-q", str(origin), str(path)], path.parent)
    run(["dvc", "remote", "add", "--local", "-d", "team", *remote_args[:1]], path)
    for option, value in remote_args[1:]:
        run(["dvc", "remote", "modify", "--local", "team", option, value], path)
    run(["dvc", "pull"], path, env)
    return path


def assert_nothing_to_do(clone, origin):
    assert json.loads(run(["dvc", "status", "--json"], clone)) == {}
    assert "Running stage" not in run(["dvc", "repro"], clone)
    for name in ("data/raw/manifest.parquet", "data/subset/index.parquet", "models/finetuned/unet/config.json"):
        assert filecmp.cmp(clone / name, origin / name, shallow=False), name


def push(origin, remote_args, env=None):
    run(["dvc", "remote", "add", "--local", "-f", "team", remote_args[0]], origin)
    for option, value in remote_args[1:]:
        run(["dvc", "remote", "modify", "--local", "team", option, value], origin)
    run(["dvc", "push", "-r", "team"], origin, env)


def test_local_directory_remote(origin, tmp_path):
    remote = [str(tmp_path / "store")]
    push(origin, remote)
    clone = fresh_clone(origin, tmp_path / "clone", remote)
    assert_nothing_to_do(clone, origin)


def test_s3_remote_served_by_moto(origin, tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket="specldm-cache")
        remote = ["s3://specldm-cache/dvc", ("endpointurl", endpoint)]
        push(origin, remote, env)
        clone = fresh_clone(origin, tmp_path / "clone", remote, env)
        assert_nothing_to_do(clone, origin)
    finally:
        server.stop()


def test_data_stages_rerun_to_identical_outputs(origin):
    lock = (origin / "dvc.lock").read_text()
    for stage in ("acquire", "subset", "render"):
        run(["dvc", "repro", "--force", "--single-item", stage], origin)
    assert (origin / "dvc.lock").read_text() == lock


def test_same_seed_same_wav(origin, tmp_path):
    for name in ("a", "b"):
        run(["specldm", "generate", "Dial tone", "--seconds", "4", "--steps", "2", "--seed", "7",
             "--out", str(tmp_path / f"{name}.wav")], origin)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    run(["specldm", "generate", "Dial tone", "--seconds", "4", "--steps", "2", "--seed", "8",
         "--out", str(tmp_path / "c.wav")], origin)
    assert (tmp_path / "a.wav").read_bytes() != (tmp_path / "c.wav").read_bytes()


def test_branch_reports_only_the_table_keys_it_moved(origin):
    """Next to last: it leaves the origin on a branch, which the last test compares with main."""
    run(["git", "checkout", "-q", "-b", "more-guidance"], origin)
    params = yaml.safe_load((origin / "params.yaml").read_text())
    params["sample"]["guidance_scale"] = 6.0
    (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = run(["dvc", "repro"], origin)
    # new samples rerun scoring alone: no training, no judge, no data stage
    assert stages_ran(ran) == {"sample", "evaluate"}
    diff = json.loads(run(["dvc", "metrics", "diff", "main", "--json"], origin))
    # the sample sets moved with their intervals, and the guidance record says why; the
    # ceilings, the floor and the vocoders' resynthesis (read through the same judge) did not
    assert set(diff) == {"metrics/metrics.json", "metrics/intervals.json", "metrics/guidance.json"}
    assert diff["metrics/metrics.json"] and set(diff["metrics/metrics.json"]) <= TABLE_KEYS
    assert {key.rsplit(".", 1)[0] for key in diff["metrics/intervals.json"]} <= TABLE_KEYS
    assert diff["metrics/guidance.json"]["finetuned.guidance_scale"]["new"] == 6.0


def test_a_listening_page_puts_the_branch_beside_main(origin):
    """After the branch above: its samples and main's, same prompts and seeds, side by side,
    main's read back through DVC; the page plays in Chromium."""
    page = origin / "reports" / "compare-main.html"
    said = run(["specldm", "report", "--compare", "main"], origin)
    assert "pairs of samples" in said and page.is_file()
    text = page.read_text()
    copies = sorted((origin / "reports" / "compare-main").rglob("*.png"))
    labels = ('class="label">main: guidance ', 'class="label">workspace: guidance 6.0')
    assert copies and text.count(labels[0]) == text.count(labels[1]) == len(copies)
    for copy in copies:  # main's image, not the branch's redrawing of it
        assert copy.read_bytes() != (origin / copy.relative_to(origin / "reports" / "compare-main")).read_bytes()
    audio, images, errors = open_in_chromium(page, ROOT / "test-artifacts" / "compare.png")
    assert audio and all(error is None and duration > 0 for _, duration, error in audio)
    assert len(images) == 2 * len(copies) and all(width > 0 for _, width in images) and errors == []
