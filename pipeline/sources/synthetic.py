"""``source.kind: synthetic``: procedural 10 s clips for AudioSet classes, the offline
stand-in for YouTube.

Each class is a small recipe with real within-class variation (pitch, tempo, level,
timing, onset, background noise), so a generative model has a distribution to learn
rather than one template. Classes are named by their AudioSet display names and
resolved to ontology ids at run time, so a typo cannot produce a fake label.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve
from tqdm import tqdm

from pipeline.config.core import Sections
from pipeline.config.source import SourceParams
from pipeline.config.spectrogram import spectrogram_spec
from pipeline.engine import LocalEngine
from pipeline.errors import AcquireError
from pipeline.files import flac_bytes
from pipeline.ontology import Ontology
from pipeline.sources.clip_shards import Sealer, assign_shards, stage_clip
from pipeline.sources.manifest import new_row

Recipe = Callable[[np.random.Generator, np.ndarray, int], np.ndarray]


# ---------------------------------------------------------------- building blocks

def _phase(freq: np.ndarray | float, t: np.ndarray, sr: int) -> np.ndarray:
    """Phase of a tone whose frequency may change sample by sample."""
    freq = np.broadcast_to(np.asarray(freq, dtype=np.float64), t.shape)
    return 2 * np.pi * np.cumsum(freq) / sr


def _tones(freqs, t: np.ndarray, sr: int, amps=None) -> np.ndarray:
    amps = np.ones(len(freqs)) if amps is None else amps
    return sum(a * np.sin(_phase(f, t, sr)) for f, a in zip(freqs, amps))


def _gate(t: np.ndarray, on: float, off: float, offset: float = 0.0) -> np.ndarray:
    """1 during ``on`` seconds, 0 during ``off`` seconds, repeating, with 5 ms ramps."""
    period = on + off
    position = np.mod(t - offset, period)
    ramp = 0.005
    return np.clip(np.minimum(position / ramp, (on - position) / ramp), 0.0, 1.0)


def _strikes(times, kernel: np.ndarray, n: int, sr: int, gains=None) -> np.ndarray:
    """Place ``kernel`` (a struck sound) at each onset time, by convolution."""
    impulses = np.zeros(n)
    gains = np.ones(len(times)) if gains is None else gains
    for when, gain in zip(times, gains):
        index = int(when * sr)
        if 0 <= index < n:
            impulses[index] += gain
    return fftconvolve(impulses, kernel)[:n]


def _decaying(freqs, decays, seconds: float, sr: int, amps=None) -> np.ndarray:
    """A struck resonator: partials ``freqs`` (Hz) each decaying with its time constant."""
    t = np.arange(int(seconds * sr)) / sr
    amps = np.ones(len(freqs)) if amps is None else amps
    return sum(a * np.exp(-t / d) * np.sin(2 * np.pi * f * t) for f, d, a in zip(freqs, decays, amps))


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    return np.fft.irfft(spectrum / freqs ** (exponent / 2), n)


def _band(signal: np.ndarray, low: float, high: float, sr: int) -> np.ndarray:
    """Brick-wall band-pass in the frequency domain (good enough for texture)."""
    spectrum = np.fft.rfft(signal)
    freqs = np.fft.rfftfreq(len(signal), 1 / sr)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, len(signal))


def _regular_times(rng: np.random.Generator, period: float, seconds: float,
                   jitter: float = 0.0) -> np.ndarray:
    times = np.arange(rng.uniform(0, period), seconds, period)
    return times + rng.normal(0, jitter, len(times)) if jitter else times


def _harmonic_tone(t, sr, freq, harmonics=(1, 0.3, 0.1)):
    return sum(a * np.sin(_phase(freq * (k + 1), t, sr)) for k, a in enumerate(harmonics))


def _slow_wobble(rng: np.random.Generator, t: np.ndarray, depth: float, rate: float) -> np.ndarray:
    return 1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))


# ---------------------------------------------------------------- recipes

def dial_tone(rng, t, sr):
    pair = [(350, 440), (425,), (400, 450)][rng.integers(3)]
    return _tones([f * rng.uniform(0.99, 1.01) for f in pair], t, sr)


def busy_signal(rng, t, sr):
    pair = [(480, 620), (425,)][rng.integers(2)]
    half = rng.uniform(0.2, 0.5)
    return _tones(pair, t, sr) * _gate(t, half, half, rng.uniform(0, 1))


DTMF_ROWS, DTMF_COLS = (697, 770, 852, 941), (1209, 1336, 1477)


def telephone_dialing(rng, t, sr):
    out = np.zeros_like(t)
    when = rng.uniform(0, 1)
    while when < t[-1]:
        for _ in range(rng.integers(4, 11)):
            length = rng.uniform(0.06, 0.18)
            mask = (t >= when) & (t < when + length)
            out[mask] = _tones([DTMF_ROWS[rng.integers(4)], DTMF_COLS[rng.integers(3)]],
                               t[mask], sr)
            when += length + rng.uniform(0.05, 0.2)
        when += rng.uniform(0.8, 2.5)
    return out


def ringtone(rng, t, sr):
    if rng.random() < 0.5:
        on, off = [(2.0, 4.0), (1.0, 2.0), (1.5, 3.0)][rng.integers(3)]
        trill = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(15, 25) * t))
        return _tones([440, 480], t, sr) * _gate(t, on, off, rng.uniform(0, 2)) * trill
    pentatonic = 2 ** (np.array([0, 2, 4, 7, 9, 12]) / 12)
    melody = rng.uniform(500, 900) * rng.choice(pentatonic, rng.integers(4, 8))
    note = rng.uniform(0.1, 0.2)
    index = (t // note).astype(int) % (len(melody) + 3)
    freq = np.where(index < len(melody), melody[np.minimum(index, len(melody) - 1)], 0)
    return _harmonic_tone(t, sr, freq, harmonics=(1, 0.4, 0.2)) * (freq > 0)


def police_siren(rng, t, sr):
    period = rng.uniform(3, 6)
    freq = rng.uniform(900, 1100) + rng.uniform(300, 450) * np.sin(2 * np.pi * t / period)
    return _harmonic_tone(t, sr, freq)


def ambulance_siren(rng, t, sr):
    low = rng.uniform(650, 900)
    switch = rng.uniform(0.4, 0.7)
    high = (np.floor(t / switch + rng.uniform(0, 1)) % 2).astype(bool)
    return _harmonic_tone(t, sr, np.where(high, low * 1.26, low))


def fire_engine_siren(rng, t, sr):
    period = rng.uniform(0.22, 0.4)
    freq = rng.uniform(1100, 1400) + rng.uniform(300, 450) * np.sin(2 * np.pi * t / period)
    return _harmonic_tone(t, sr, freq)


def civil_defense_siren(rng, t, sr):
    period = rng.uniform(8, 14)
    freq = rng.uniform(350, 500) + rng.uniform(100, 180) * np.sin(2 * np.pi * t / period)
    rotation = _slow_wobble(rng, t, 0.4, 1 / rng.uniform(2, 4))
    return _harmonic_tone(t, sr, freq, harmonics=(1, 0.05, 0.33, 0.02, 0.2)) * rotation


def white_noise(rng, t, sr):
    return rng.standard_normal(len(t)) * _slow_wobble(rng, t, rng.uniform(0, 0.2), 0.1)


def pink_noise(rng, t, sr):
    return _coloured_noise(rng, len(t), 1.0) * _slow_wobble(rng, t, rng.uniform(0, 0.2), 0.1)


def _click(rng, sr, centre: float) -> np.ndarray:
    noise = rng.standard_normal(int(0.02 * sr)) * np.exp(-np.arange(int(0.02 * sr)) / (0.002 * sr))
    return _band(noise, centre * 0.7, centre * 1.4, sr) + _decaying([centre], [0.004], 0.02, sr)


def tick(rng, t, sr):
    period = rng.uniform(0.5, 1.0)
    return _strikes(_regular_times(rng, period, t[-1]), _click(rng, sr, rng.uniform(2500, 4500)),
                    len(t), sr)


def tick_tock(rng, t, sr):
    period = rng.uniform(0.25, 0.5)
    times = _regular_times(rng, 2 * period, t[-1])
    high, low = rng.uniform(2800, 4000), rng.uniform(1400, 2200)
    return (_strikes(times, _click(rng, sr, high), len(t), sr)
            + _strikes(times + period, _click(rng, sr, low), len(t), sr))


def church_bell(rng, t, sr):
    fundamental = rng.uniform(200, 600)
    ratios = [0.5, 1.0, 1.19, 1.5, 2.0, 2.5, 2.67, 3.0]
    decays = [4.0, 3.0, 2.0, 1.6, 1.2, 0.8, 0.7, 0.5]
    bell = _decaying([fundamental * r for r in ratios], decays, 5.0, sr,
                     amps=[0.6, 1, 0.7, 0.4, 0.5, 0.3, 0.25, 0.2])
    return _strikes(_regular_times(rng, rng.uniform(1.5, 3.0), t[-1]), bell, len(t), sr)


def jingle_bell(rng, t, sr):
    out = np.zeros_like(t)
    for shake in _regular_times(rng, 1 / rng.uniform(2, 4), t[-1], jitter=0.02):
        pings = _decaying(rng.uniform(2500, 8000, 6), rng.uniform(0.03, 0.12, 6), 0.3, sr)
        out += _strikes(shake + rng.uniform(0, 0.06, 4), pings, len(t), sr)
    return out


def tuning_fork(rng, t, sr):
    f = rng.choice([256.0, 288.0, 320.0, 384.0, 426.7, 440.0, 512.0])
    fork = _decaying([f, 6.25 * f], [rng.uniform(3, 6), 0.05], 8.0, sr, amps=[1, 0.3])
    times = np.sort(rng.uniform(0, t[-1] - 1, rng.integers(1, 4)))
    return _strikes(times, fork, len(t), sr)


def cowbell(rng, t, sr):
    scale = rng.uniform(0.8, 1.3)
    bell = _decaying([540 * scale, 835 * scale], [rng.uniform(0.08, 0.25)] * 2, 1.0, sr)
    beat = 60 / rng.uniform(90, 140)
    times = _regular_times(rng, beat / 2, t[-1])
    keep = rng.random(len(times)) < 0.7
    return _strikes(times[keep], bell, len(t), sr)


def _kick(rng, sr):
    n = int(0.5 * sr)
    k = np.arange(n) / sr
    freq = 45 + rng.uniform(60, 100) * np.exp(-k / 0.03)
    return np.sin(_phase(freq, k, sr)) * np.exp(-k / rng.uniform(0.12, 0.3))


def bass_drum(rng, t, sr):
    beat = 60 / rng.uniform(80, 140)
    return _strikes(_regular_times(rng, beat, t[-1], jitter=0.005), _kick(rng, sr), len(t), sr)


def snare_drum(rng, t, sr):
    n = int(0.3 * sr)
    k = np.arange(n) / sr
    body = np.sin(2 * np.pi * rng.uniform(170, 230) * k) * np.exp(-k / 0.04)
    rattle = _band(rng.standard_normal(n), 1000, 8000, sr) * np.exp(-k / rng.uniform(0.06, 0.15))
    beat = 60 / rng.uniform(80, 140)
    times = _regular_times(rng, 2 * beat, t[-1]) + beat
    return _strikes(times, 0.6 * body + rattle, len(t), sr)


def timpani(rng, t, sr):
    f = rng.uniform(90, 180)
    drum = _decaying([f, 1.5 * f, 1.98 * f, 2.44 * f], [1.5, 1.0, 0.8, 0.5], 3.0, sr,
                     amps=[1, 0.6, 0.4, 0.2])
    times = list(_regular_times(rng, rng.uniform(1.0, 2.5), t[-1]))
    if rng.random() < 0.5:
        start = rng.uniform(0, t[-1] - 2)
        times += list(np.arange(start, start + rng.uniform(1, 2), 1 / rng.uniform(10, 15)))
    return _strikes(np.array(times), drum, len(t), sr, gains=rng.uniform(0.6, 1.0, len(times)))


def _engine(rng, t, sr, firing: np.ndarray) -> np.ndarray:
    phase = _phase(firing * (1 + rng.normal(0, 0.02, len(t))), t, sr)
    pulses = np.maximum(np.sin(phase), 0) ** 8
    rumble = _band(pulses + 0.3 * rng.standard_normal(len(t)), 20, rng.uniform(400, 900), sr)
    return rumble + 0.2 * np.sin(phase / 2)


def idling(rng, t, sr):
    return _engine(rng, t, sr, np.full_like(t, rng.uniform(15, 35)))


def accelerating(rng, t, sr):
    start, top = rng.uniform(18, 30), rng.uniform(80, 130)
    rev = rng.uniform(3, 6)
    ramp = np.clip(np.mod(t - rng.uniform(0, 2), rev + 1.5) / rev, 0, 1)
    return _engine(rng, t, sr, start + (top - start) * ramp ** 1.5)


def rain(rng, t, sr):
    rate = rng.uniform(150, 600)
    drops = np.sort(rng.uniform(0, t[-1], int(rate * t[-1])))
    drop = _decaying([rng.uniform(3000, 7000)], [0.004], 0.02, sr)
    hiss = _band(_coloured_noise(rng, len(t), 1.0), 500, 8000, sr)
    pattering = _strikes(drops, drop, len(t), sr, gains=rng.uniform(0.2, 1, len(drops)))
    return pattering / (np.std(pattering) + 1e-9) + rng.uniform(0.3, 1.0) * hiss / np.std(hiss)


def stream(rng, t, sr):
    flow = _band(rng.standard_normal(len(t)), 300, 3000, sr) * _slow_wobble(rng, t, 0.3, 0.3)
    bubbles = np.zeros_like(t)
    for when in rng.uniform(0, t[-1], int(rng.uniform(5, 20) * t[-1])):
        n = int(rng.uniform(0.01, 0.03) * sr)
        k = np.arange(n) / sr
        start = int(when * sr)
        freq = rng.uniform(500, 1500) * (1 + 8 * k)
        bubbles[start:start + n] += (np.sin(_phase(freq, k, sr)) * np.exp(-k / 0.01))[:len(t) - start]
    return flow / np.std(flow) + 2 * bubbles


def chirp_tone(rng, t, sr):
    low, high = rng.uniform(150, 500), rng.uniform(2000, 6000)
    length = rng.uniform(0.5, 3.0)
    position = np.mod(t, length + rng.uniform(0, 0.5)) / length
    freq = low * (high / low) ** np.clip(position, 0, 1)
    return np.sin(_phase(freq, t, sr)) * (position <= 1)


def sine_wave(rng, t, sr):
    return np.sin(_phase(np.exp(rng.uniform(np.log(100), np.log(4000))), t, sr))


def wind(rng, t, sr):
    gusts = np.clip(_slow_wobble(rng, t, 0.6, rng.uniform(0.05, 0.2))
                    * _slow_wobble(rng, t, 0.3, rng.uniform(0.3, 0.6)), 0.05, None)
    body = _band(_coloured_noise(rng, len(t), 2.0), 30, rng.uniform(600, 1500), sr)
    return body / np.std(body) * gusts


# ---------------------------------------------------------------- catalogue

@dataclass(frozen=True)
class SyntheticClass:
    name: str  # AudioSet display name
    recipe: Recipe
    continuous: bool  # level by RMS over the whole clip (tones, noise) rather than peaks


# Grouped by shared ontology parent (in brackets) so that mixtures of siblings exist;
# the first 24 classes, the default, span 8 parents.
CATALOGUE: tuple[SyntheticClass, ...] = (
    SyntheticClass("Dial tone", dial_tone, True),  # [Telephone]
    SyntheticClass("Busy signal", busy_signal, True),
    SyntheticClass("Telephone dialing, DTMF", telephone_dialing, True),
    SyntheticClass("Ringtone", ringtone, True),
    SyntheticClass("Police car (siren)", police_siren, True),  # [Siren]
    SyntheticClass("Ambulance (siren)", ambulance_siren, True),
    SyntheticClass("Fire engine, fire truck (siren)", fire_engine_siren, True),
    SyntheticClass("Civil defense siren", civil_defense_siren, True),
    SyntheticClass("White noise", white_noise, True),  # [Noise]
    SyntheticClass("Pink noise", pink_noise, True),
    SyntheticClass("Tick", tick, False),  # [Clock]
    SyntheticClass("Tick-tock", tick_tock, False),
    SyntheticClass("Church bell", church_bell, False),  # [Bell]
    SyntheticClass("Jingle bell", jingle_bell, False),
    SyntheticClass("Tuning fork", tuning_fork, False),
    SyntheticClass("Cowbell", cowbell, False),
    SyntheticClass("Bass drum", bass_drum, False),  # [Drum]
    SyntheticClass("Snare drum", snare_drum, False),
    SyntheticClass("Idling", idling, True),  # [Engine]
    SyntheticClass("Accelerating, revving, vroom", accelerating, True),
    SyntheticClass("Rain", rain, True),  # [Water]
    SyntheticClass("Stream", stream, True),
    SyntheticClass("Sine wave", sine_wave, True),  # [Other sourceless]
    SyntheticClass("Chirp tone", chirp_tone, True),  # [Sine wave]
    SyntheticClass("Timpani", timpani, False),  # [Drum]
    SyntheticClass("Wind", wind, True),  # [Natural sounds]
)


def render_clip(cls: SyntheticClass, rng: np.random.Generator, sample_rate: int,
                seconds: float, overlay: SyntheticClass | None = None) -> np.ndarray:
    """One clip of ``cls`` (plus an audible ``overlay`` sound if given), float32 in [-1, 1].

    Level, onset and background noise vary per clip; the background sits 35-60 dB
    below the sound so silence is never digital zero.
    """
    n = round(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    sound = _levelled(cls, rng, t, sample_rate)
    if overlay is not None:
        sound += _levelled(overlay, rng, t, sample_rate) * 10 ** (rng.uniform(-8, 0) / 20)
    background = _coloured_noise(rng, n, rng.uniform(0.0, 1.5))
    sound += background / np.std(background) * 10 ** (rng.uniform(-75, -55) / 20)
    peak = np.max(np.abs(sound))
    if peak > 0.99:
        sound *= 0.99 / peak
    return sound.astype(np.float32)


def _levelled(cls: SyntheticClass, rng: np.random.Generator, t: np.ndarray, sr: int) -> np.ndarray:
    sound = cls.recipe(rng, t, sr)
    if cls.continuous:
        sound = sound / (np.sqrt(np.mean(sound ** 2)) + 1e-12) * 10 ** (rng.uniform(-26, -14) / 20)
    else:
        sound = sound / (np.max(np.abs(sound)) + 1e-12) * 10 ** (rng.uniform(-12, -3) / 20)
    onset = rng.uniform(0, 1.0)
    fade = np.clip((t - onset) / 0.01, 0, 1)
    return sound * fade


# ---------------------------------------------------------------- the source

@dataclass(frozen=True)
class SyntheticClip:
    id: str
    cls: SyntheticClass
    overlay: SyntheticClass | None
    seed: tuple[int, int, int]


def plan_synthetic(source: SourceParams, ontology: Ontology) -> list[SyntheticClip]:
    """Which clips to render. Each clip's randomness comes from (seed, class, clip) alone,
    so any clip can be regenerated independently and identically."""
    if source.num_classes > len(CATALOGUE):
        raise AcquireError(f"source.num_classes={source.num_classes}: the synthetic catalogue "
                           f"has {len(CATALOGUE)} classes")
    chosen = CATALOGUE[:source.num_classes]
    parents = {c.name: set(ontology.parents(ontology.resolve(c.name))) for c in chosen}
    clips = []
    for class_index, cls in enumerate(chosen):
        partners = [c for c in chosen if not parents[c.name] & parents[cls.name] and c is not cls]
        for clip_index in range(source.clips_per_class):
            seed = (source.seed, class_index, clip_index)
            rng = np.random.default_rng(seed + (1,))
            overlay = None
            if partners and rng.random() < source.two_label_fraction:
                overlay = partners[rng.integers(len(partners))]
            clips.append(SyntheticClip(f"syn-{class_index:02d}-{clip_index:04d}", cls, overlay, seed))
    return clips


@dataclass(frozen=True)
class SynthesisTask:
    clips: tuple[SyntheticClip, ...]
    sample_rate: int
    clip_seconds: float


def synthesize(task: SynthesisTask) -> list[bytes]:
    """The FLAC bytes of each clip of ``task``: a partition, as an engine runs it."""
    return [flac_bytes(render_clip(clip.cls, np.random.default_rng(clip.seed), task.sample_rate,
                                   task.clip_seconds, overlay=clip.overlay), task.sample_rate)
            for clip in task.clips]


def acquire_synthetic(params: Sections, raw_dir: Path, ontology: Ontology, engine=None) -> list[dict]:
    """Every clip staged and sealed into its shard (see :mod:`pipeline.sources.clip_shards`),
    made in tasks of ``engine.task_clips`` clips on ``engine`` (:mod:`pipeline.engine`; None:
    in this process)."""
    spec = spectrogram_spec(params.spectrogram, params.render)
    clips = plan_synthetic(params.source, ontology)
    rows = []
    for clip in clips:
        labels = [ontology.resolve(clip.cls.name)]
        if clip.overlay is not None:
            labels.append(ontology.resolve(clip.overlay.name))
        rows.append(new_row(clip.id, "synthetic", clip.cls.recipe.__name__, labels, 0.0, spec.clip_seconds))
    assign_shards(rows, params.source.shard_clips)
    sealer = Sealer(rows, raw_dir)
    size = params.engine.task_clips
    starts = range(0, len(clips), size)
    tasks = (SynthesisTask(tuple(clips[start:start + size]), spec.sample_rate, spec.clip_seconds) for start in starts)
    bar = tqdm(total=len(clips), desc="acquire synthetic", unit="clip", file=sys.stderr)
    for start, flacs in zip(starts, (engine or LocalEngine()).map(synthesize, tasks)):
        chunk = rows[start:start + size]
        for row, flac in zip(chunk, flacs):
            row["attempts"] = 1
            stage_clip(raw_dir, row, flac)
        sealer.seal({row["path"] for row in chunk})
        bar.update(len(chunk))
    bar.close()
    return rows
