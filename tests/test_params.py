import pytest
import yaml

from pipeline import cli
from pipeline.params import PARAMS_YAML, ParamsError, load, parse, profile, render_profile


def test_params_yaml_is_the_embedded_default():
    assert PARAMS_YAML.read_text() == render_profile("default")
    assert load() == profile("default")


def test_paper_profile():
    paper = profile("paper")
    assert paper.source.kind == "audioset"
    assert paper.source.segments == ("data/meta/balanced_train_segments.csv",)
    spec = paper.spec
    assert (spec.n_mels, spec.n_frames, spec.image_size) == (128, 128, 512)


def test_switching_profile_and_back(tmp_path):
    target = str(tmp_path / "params.yaml")
    assert cli.main(["profile", "paper", "--params", target]) == 0
    assert load(target).render.image_size == 512
    assert cli.main(["profile", "default", "--params", target]) == 0
    assert (tmp_path / "params.yaml").read_text() == PARAMS_YAML.read_text()
    assert cli.main(["profile", "nonexistent", "--params", target]) == 2


@pytest.mark.parametrize("raw, message", [
    ({"source": {"kindd": "synthetic"}}, r"source\.kindd: unknown key"),
    ({"sources": {}}, r"sources: unknown key"),
    ({"source": {"clips_per_class": "ten"}}, r"source\.clips_per_class: expected an integer"),
    ({"source": {"clips_per_class": 2.5}}, r"source\.clips_per_class: expected an integer"),
    ({"source": {"clips_per_class": 0}}, r"source\.clips_per_class: must be at least 1"),
    ({"source": {"kind": "youtube"}}, r"source\.kind: must be one of"),
    ({"source": {"segments": "a.csv"}}, r"source\.segments: expected a list"),
    ({"source": {"url_template": "http://x/"}}, r"source\.url_template: must contain"),
    ({"source": {"kind": "local"}}, r"source\.dir: is required"),
    ({"source": {"kind": "audioset", "segments": []}}, r"source\.segments: needs at least one"),
    ({"source": {"short_clips": "stretch"}}, r"source\.short_clips: must be one of"),
    ({"source": {"long_clips": "keep"}}, r"source\.long_clips: must be one of"),
    ({"source": {"min_rms_db": 6}}, r"source\.min_rms_db: must be below 0"),
    ({"source": {"max_per_class": -1}}, r"source\.max_per_class: must be 0"),
    ({"source": {"classes": "Siren"}}, r"source\.classes: expected a list"),
    ({"download": {"workers": 0}}, r"download\.workers: must be at least 1"),
    ({"download": {"timeout_seconds": 0}}, r"download\.timeout_seconds: must be positive"),
    ({"download": {"retries": -1}}, r"download\.retries: must be 0 or more"),
    ({"render": {"image_size": 100}}, r"render\.image_size: .*divisible by 8"),
    ({"spectrogram": {"f_max": 9000}}, r"spectrogram\.f_max: .*Nyquist"),
    ({"spectrogram": {"hop_length": 0}}, r"spectrogram\.hop_length"),
    ({"spectrogram": {"min_db": True}}, r"spectrogram\.min_db: expected a number"),
    ({"render": 512}, r"render: expected a mapping"),
])
def test_invalid_params_name_the_key(raw, message):
    with pytest.raises(ParamsError, match=message):
        parse(raw)


def test_numbers_are_coerced_and_defaults_fill_gaps():
    params = parse({"spectrogram": {"f_max": 7000}})
    assert params.spectrogram.f_max == 7000.0 and isinstance(params.spectrogram.f_max, float)
    assert params.source.num_classes == profile("default").source.num_classes


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load(bad)
    assert yaml.safe_load(render_profile("paper"))["render"]["image_size"] == 512
