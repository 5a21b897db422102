import math

import pytest
import torch

from pipeline.audio.spectrogram import (
    SpecError,
    SpectrogramSpec,
    check_image_size,
    frames_for_width,
    image_to_log_mel,
    image_to_waveform,
    log_mel_to_image,
    log_mel_to_waveform,
    waveform_to_log_mel,
    width_for_seconds,
)

SPEC = SpectrogramSpec()


def sine(freq, seconds=10.0, amplitude=0.5, sr=16_000):
    t = torch.arange(round(seconds * sr)) / sr
    return amplitude * torch.sin(2 * math.pi * freq * t)


def hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def dominant_frequency(wave, sr=16_000):
    spectrum = torch.fft.rfft(wave * torch.hann_window(len(wave)))
    return spectrum.abs().argmax().item() * sr / len(wave)


def test_paper_geometry():
    assert (SPEC.sample_rate, SPEC.clip_seconds, SPEC.n_mels, SPEC.n_frames) == (16_000, 10.0, 128, 128)
    log_mel = waveform_to_log_mel(sine(1000), SPEC)
    assert log_mel.shape == (128, 128) and log_mel.dtype == torch.float32
    image = log_mel_to_image(log_mel, SPEC)
    assert image.shape == (3, 512, 512) and image.dtype == torch.uint8


def test_batched_equals_single():
    waves = torch.stack([sine(440), sine(2000, amplitude=0.1)])
    batch = waveform_to_log_mel(waves, SPEC)
    assert batch.shape == (2, 128, 128)
    torch.testing.assert_close(batch[1], waveform_to_log_mel(waves[1], SPEC))
    images = log_mel_to_image(batch, SPEC, 64, 400)
    assert images.shape == (2, 3, 64, 400)


def test_fixed_db_range_and_grey_rgb():
    log_mel = waveform_to_log_mel(sine(1000, amplitude=1.0) + 0, SPEC)
    assert log_mel.min() >= SPEC.min_db and log_mel.max() <= SPEC.max_db
    silent = waveform_to_log_mel(torch.zeros(160_000), SPEC)
    assert torch.all(silent == SPEC.min_db)
    image = log_mel_to_image(silent, SPEC)
    assert image.max() == 0
    loud = log_mel_to_image(torch.full((128, 128), SPEC.max_db + 30), SPEC)
    assert loud.min() == 255
    mixed = log_mel_to_image(waveform_to_log_mel(sine(1000), SPEC), SPEC)
    assert torch.equal(mixed[0], mixed[1]) and torch.equal(mixed[1], mixed[2])


def test_low_frequencies_at_the_bottom():
    image = log_mel_to_image(waveform_to_log_mel(sine(200), SPEC), SPEC)[0].float()
    bright_row = image.mean(dim=1).argmax().item()
    assert bright_row > 0.75 * image.shape[0]
    image = log_mel_to_image(waveform_to_log_mel(sine(6000), SPEC), SPEC)[0].float()
    assert image.mean(dim=1).argmax().item() < 0.25 * image.shape[0]


def test_image_round_trip_within_quantisation():
    log_mel = waveform_to_log_mel(sine(1000) + 0.01 * torch.randn(160_000), SPEC)
    back = image_to_log_mel(log_mel_to_image(log_mel, SPEC), SPEC)
    step = (SPEC.max_db - SPEC.min_db) / 255
    assert back.shape == log_mel.shape
    assert (back - log_mel).abs().max() <= step / 2 + 1e-4


def test_bilinear_mode_round_trip_is_close():
    # Bilinear upsampling blurs sharp edges, so unlike "nearest" it is not exactly invertible.
    spec = SPEC.replace(resize_mode="bilinear")
    log_mel = waveform_to_log_mel(sine(1000), spec)
    back = image_to_log_mel(log_mel_to_image(log_mel, spec), spec)
    assert back.shape == log_mel.shape
    assert (back - log_mel).abs().mean() < 2.0


def test_sine_survives_audio_image_audio():
    freq = 1000.0
    envelope = torch.ones(160_000)
    envelope[80_000:] = 0.1  # 20 dB drop half way
    wave = sine(freq) * envelope
    image = log_mel_to_image(waveform_to_log_mel(wave, SPEC), SPEC)
    out = image_to_waveform(image, SPEC)
    assert out.shape == (160_000,)
    # Frequency within one mel band (bands are ~f_max-mel / (n_mels + 1) mel wide).
    band_width_mel = hz_to_mel(SPEC.f_max) / (SPEC.n_mels + 1)
    found = dominant_frequency(out[10_000:70_000])
    assert abs(hz_to_mel(found) - hz_to_mel(freq)) < band_width_mel
    # Energy envelope: the 20 dB step survives, within 3 dB.
    first = out[10_000:70_000].pow(2).mean()
    second = out[90_000:150_000].pow(2).mean()
    assert abs(10 * math.log10(first / second) - 20.0) < 3.0
    assert abs(10 * math.log10(first / wave[10_000:70_000].pow(2).mean())) < 3.0


def test_griffin_lim_is_seeded():
    log_mel = waveform_to_log_mel(sine(700, seconds=2.0), SPEC)
    a = log_mel_to_waveform(log_mel, SPEC, n_iter=4, seed=1)
    b = log_mel_to_waveform(log_mel, SPEC, n_iter=4, seed=1)
    c = log_mel_to_waveform(log_mel, SPEC, n_iter=4, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampling_geometry_64x400():
    assert frames_for_width(400, SPEC) == 100  # 400 px at 512 px per 10 s = 7.8 s
    image = log_mel_to_image(waveform_to_log_mel(sine(1000), SPEC), SPEC, 64, 400)
    log_mel = image_to_log_mel(image, SPEC)
    assert log_mel.shape == (128, 100)
    wave = log_mel_to_waveform(log_mel, SPEC, n_iter=2)
    assert wave.shape == (100 * SPEC.hop_length,)
    assert width_for_seconds(10.0, SPEC) == 512 and width_for_seconds(1.0, SPEC) % 8 == 0


@pytest.mark.parametrize("changes, field", [
    (dict(hop_length=0), "hop_length"),
    (dict(hop_length=-5), "hop_length"),
    (dict(image_size=500), "image_size"),
    (dict(f_max=9000.0), "f_max"),
    (dict(min_db=10.0, max_db=0.0), "min_db"),
    (dict(resize_mode="cubic"), "resize_mode"),
    (dict(n_mels=5000), "n_mels"),
])
def test_invalid_specs_name_the_field(changes, field):
    with pytest.raises(SpecError, match=field):
        SpectrogramSpec(**changes)


def test_f_max_error_mentions_nyquist():
    with pytest.raises(SpecError, match="Nyquist"):
        SpectrogramSpec(sample_rate=8000, f_max=8000.0)


def test_image_sizes_must_be_multiples_of_8():
    check_image_size(64, 400)
    with pytest.raises(SpecError, match="width=401"):
        check_image_size(64, 401)
    with pytest.raises(SpecError, match="multiple of 8"):
        log_mel_to_image(torch.zeros(128, 128), SPEC, 60, 400)


def test_rejects_wrong_inputs():
    with pytest.raises(SpecError, match="128"):
        log_mel_to_image(torch.zeros(64, 10), SPEC)
    with pytest.raises(SpecError, match="uint8"):
        image_to_log_mel(torch.zeros(3, 64, 64), SPEC)
    with pytest.raises(SpecError, match="hop"):
        waveform_to_log_mel(torch.zeros(10), SPEC)


def test_mel_band_centres_are_where_the_mel_filterbank_peaks():
    from torchaudio.functional import melscale_fbanks

    from pipeline.audio.spectrogram import mel_band_centres

    spec = SpectrogramSpec()
    bank = melscale_fbanks(spec.n_fft // 2 + 1, spec.f_min, spec.f_max, spec.n_mels, spec.sample_rate)
    bin_hz = spec.sample_rate / spec.n_fft
    peaks = bank.argmax(dim=0).double() * bin_hz
    assert (mel_band_centres(spec) - peaks).abs().max() <= bin_hz / 2 + 1e-6
