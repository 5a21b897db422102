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
    # values that used to pass and make garbage, or a traceback, later
    ({"pretrain": {"kl_weight": float("nan")}}, r"pretrain\.kl_weight: must be a finite number, got nan"),
    ({"sample": {"guidance_scale": float("inf")}}, r"sample\.guidance_scale: must be a finite number"),
    ({"sample": {"guidance_scale": [2.0, float("nan")]}}, r"sample\.guidance_scale\[1\]: must be a finite number"),
    ({"sample": {"guidance_scale": [3.0, 3.0]}}, r"sample\.guidance_scale: lists a scale twice"),
    ({"sample": {"guidance_scale": [0.5, 3.0]}}, r"sample\.guidance_scale: must be at least 1"),
    ({"sample": {"guidance_scale": []}}, r"sample\.guidance_scale: needs at least one scale"),
    ({"train": {"resolutions": ["64x401"]}}, r"train\.resolutions\[0\]: .*multiples of 8"),
    ({"train": {"resolutions": ["64x400", "64x400"]}}, r"train\.resolutions: lists a size twice"),
    ({"train": {"vae_crop_size": 60}}, r"train\.vae_crop_size: must be a positive multiple of 8"),
    ({"model": {"vae_channels": [16, 32]}}, r"model\.vae_channels: needs 4 levels .* or 3 \(4x\)"),
    ({"spectrogram": {"min_db": -float("inf")}}, r"spectrogram\.min_db: must be a finite number"),
    ({"spectrogram": {"clip_seconds": float("inf")}}, r"spectrogram\.clip_seconds: must be a finite"),
    ({"render": {"image_size": 2**40}}, r"render\.image_size: must be within \[8, 2048\]"),
    ({"subset": {"caption_template": "{name} {x}"}}, r"subset\.caption_template: unknown placeholder \{x\}"),
    ({"subset": {"caption_template": "{name"}}, r"subset\.caption_template: .* is not a valid template"),
    ({"subset": {"mixture_template": "{parent} {a} {b} {c}"}}, r"subset\.mixture_template: unknown placeholder"),
    ({"source": {"url_template": "http://x/{ytid}/{x}"}}, r"source\.url_template: unknown placeholder \{x\}"),
    ({"sample": {"resolutions": ["064x064"]}}, r"sample\.resolutions\[0\]: write '064x064' as '64x64'"),
    ({"sample": {"resolutions": ["64X64"]}}, r"sample\.resolutions\[0\]: '64X64' is not '<H>x<W>'"),
    ({"sample": {"resolutions": ["8x4096"]}}, r"sample\.resolutions\[0\]: .* up to 2048"),
    # a format spec or conversion would fail, or allocate, on every segment at download time
    ({"source": {"url_template": "http://x/{ytid:d}"}}, r"source\.url_template: \{ytid\} takes no format spec"),
    ({"source": {"url_template": "http://x/{ytid!z}"}}, r"source\.url_template: \{ytid\} takes no format spec"),
    ({"source": {"url_template": "http://x/{ytid!r}"}}, r"source\.url_template: \{ytid\} takes no format spec"),
    ({"source": {"url_template": "{ytid:>99999999999}"}}, r"source\.url_template: \{ytid\} takes no format spec"),
    ({"sample": {"longform_seconds": 10.0}}, r"sample\.longform_seconds: must exceed one window, "
                                             r"spectrogram\.clip_seconds=10\.0"),
    ({"sample": {"longform_seconds": 1e9}}, r"sample\.longform_seconds: must be positive and at most 3600"),
    ({"sample": {"per_class": 10**9}}, r"sample\.per_class: must be at most 100000"),
    ({"vocoder": {"seed": -1}}, r"vocoder\.seed: must not be negative"),
    ({"vocoder": {"dim": 10**9}}, r"vocoder\.dim: must be at most 8192"),
    ({"vocoder": {"n_fft": 2**40}}, r"vocoder\.n_fft: must be at most 65536"),
    ({"evaluate": {"inception_weights": "my.pt"}}, r"evaluate\.inception_sha256: must be the 64 lower-case hex"),
    ({"evaluate": {"inception_sha256": "ab" * 32}}, r"evaluate\.inception_sha256: only goes with"),
    ({"evaluate": {"bootstrap": 5}}, r"evaluate\.bootstrap: must be within \[20, 100000\]"),
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


def test_an_empty_params_file_is_refused(tmp_path):
    empty = tmp_path / "params.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ParamsError, match="is empty; write a profile into it"):
        load(empty)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    """Nine levels of nine aliases are 9**9 strings if written out. Aliases are refused as
    they are read (the bomb used to cost 8 s and 1.2 GB before the type check refused it)."""
    levels = ['&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    bomb = tmp_path / "params.yaml"
    bomb.write_text(f"sample:\n  resolutions: [{', '.join(levels)}]\n")
    assert len(bomb.read_bytes()) < 500
    with pytest.raises(ParamsError, match=r"aliases \(\*name\) are not allowed") as error:
        load(bomb)
    assert len(str(error.value)) < 400


@pytest.mark.parametrize("name", ["../x/evil", "tiny/../../x/evil", "<absolute>"])
def test_a_profile_is_a_name_never_a_path(tmp_path, monkeypatch, name):
    """`specldm profile ../x/evil` read configs/../x/evil.yaml: a YAML from anywhere."""
    (tmp_path / "configs" / "tiny").mkdir(parents=True)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "evil.yaml").write_text("train: {steps: 1}\n")
    monkeypatch.chdir(tmp_path)
    name = str(tmp_path / "x" / "evil") if name == "<absolute>" else name
    with pytest.raises(ParamsError, match="unknown profile"):
        profile(name)


def test_a_profile_that_is_not_a_mapping_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "listed.yaml").write_text("- train\n- sample\n")
    with pytest.raises(ParamsError, match=r"listed\.yaml: expected a mapping of sections"):
        profile("listed")


def test_a_profile_extends_another(tmp_path, monkeypatch):
    rehearsal, paper = profile("paper-rehearsal"), profile("paper")
    # the paper's geometry and model, the rehearsal's amounts
    assert (rehearsal.render.image_size, rehearsal.model.base, rehearsal.sample.resolutions) == \
        (paper.render.image_size, paper.model.base, paper.sample.resolutions)
    assert rehearsal.train.gradient_checkpointing and rehearsal.subset.mixtures > 0
    assert rehearsal.train.steps < paper.train.steps and rehearsal.source.url_template.startswith("http://127.0.0.1:")
    monkeypatch.setattr("pipeline.params.CONFIGS_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ParamsError, match=r"extends itself \(a -> b -> a\)"):
        profile("a")
    (tmp_path / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(ParamsError, match="unknown profile 'nowhere'"):
        profile("c")


def test_a_stage_validates_the_sections_it_reads_and_no_other(tmp_path):
    from pipeline.config.core import SECTION_NAMES, load_sections
    from pipeline.config.spectrogram import SpectrogramParams
    from pipeline.config.subset import SubsetParams
    from pipeline.config.train import TrainParams
    from pipeline.config.vocoder import VocoderParams
    from pipeline.params import Params

    assert SECTION_NAMES == tuple(Params().to_dict())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"steps": 0}, "subset": {"mixtures": 3}}))
    subset_only = load_sections(path, subset=SubsetParams)
    assert subset_only.subset.mixtures == 3 and subset_only.to_dict() == {"subset": {**SubsetParams().__dict__,
                                                                                     "mixtures": 3}}
    with pytest.raises(AttributeError, match="did not load the params section 'train'"):
        _ = subset_only.train
    with pytest.raises(ParamsError, match="train.steps: must be at least 1"):
        load_sections(path, subset=SubsetParams, train=TrainParams)
    path.write_text(yaml.safe_dump({"trian": {"steps": 3}}))  # a section name misspelt: every stage says so
    with pytest.raises(ParamsError, match="trian: unknown key; known keys here: download, engine, evaluate"):
        load_sections(path, subset=SubsetParams)
    # a check across sections runs where both are loaded
    path.write_text(yaml.safe_dump({"vocoder": {"n_fft": 200}}))
    assert load_sections(path, vocoder=VocoderParams).vocoder.n_fft == 200
    with pytest.raises(ParamsError, match="vocoder.n_fft: must exceed spectrogram.vocoder_hop_length=250"):
        load_sections(path, vocoder=VocoderParams, spectrogram=SpectrogramParams)
    with pytest.raises(ParamsError, match="vocoder.n_fft: must exceed"):
        load(path)


def test_python_m_pipeline_params_checks_every_section(tmp_path):
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"bootstrap": 5}}))
    done = subprocess.run([sys.executable, "-m", "pipeline.params"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "evaluate.bootstrap: must be within [20, 100000]" in done.stderr
    (tmp_path / "params.yaml").write_text(render_profile("default"))
    done = subprocess.run([sys.executable, "-m", "pipeline.params"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "every section valid" in done.stderr
