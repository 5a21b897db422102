"""The ``specldm`` command: ``specldm profile``, ``specldm generate`` and ``specldm inpaint``.

torch, diffusers and the ontology are imported only by the commands that use them, so
`specldm profile` answers at once.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from pipeline import params
from pipeline.errors import PipelineError

GENERATE_EXAMPLES = """examples:
  specldm generate "Church bell" --out bell.wav
  specldm generate "Church bell" --vocoder griffin_lim --out bell-gl.wav
  specldm generate "a spectrogram of the sound of Rain" --seconds 5 --out rain.wav
  specldm generate /m/03w41f --height 64 --width 400 --steps 50 --guidance 5 --seed 3
  specldm generate Rain --seconds 60 --prompt-at 20:"Church bell" --out rain-then-bell.wav
"""

INPAINT_EXAMPLES = """examples:
  specldm inpaint street.wav --start 2 --end 4.5 "Church bell" --out street-bell.wav
  specldm inpaint street.wav --start 0 --end 10 --low-hz 2000 --high-hz 4000 Rain --out rainy.wav
"""


# Longer clips are drawn window by window, but decoded and vocoded as one spectrogram: past
# these the image alone outgrows a 24 GB machine. Refused with one line instead.
MAX_GENERATE_SECONDS = 600.0
MAX_INPAINT_SECONDS = 120.0
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits


def resolve_prompt(text: str, subset) -> str:
    """Text that mentions a spectrogram is a prompt as the model was trained on; anything
    else must name an AudioSet class (display name or id), which becomes its caption exactly
    as ``subset`` wrote the training captions (template, and the hierarchy when
    ``subset.verbose_captions``)."""
    if "spectrogram" in text.lower():
        return text
    from pipeline.ontology import Ontology

    ontology = Ontology.load()
    return ontology.caption(ontology.resolve(text), subset.caption_template, subset.verbose_captions)


def model_settings(args):
    """(the model directory, params, its SpectrogramSpec) the options name; a missing model is an error."""
    from pipeline.errors import ModelError
    from pipeline.models.diffusion import read_model_spec

    model = Path(args.model)
    if not (model / "model_index.json").exists():
        raise ModelError(f"no model at {model}; run `make run` (or `dvc repro train`) first, "
                         "or point --model at a diffusers pipeline directory")
    settings = params.load(args.params) if Path(args.params).exists() else params.Params()
    spec = read_model_spec(model) or settings.spec
    if args.griffin_lim_iters is not None:
        spec = spec.replace(griffin_lim_iters=args.griffin_lim_iters)
    return model, settings, spec


def guidance_scale(args, model: Path, settings) -> tuple[float, str]:
    """(the scale, where it came from): ``--guidance``, else the one the sample stage chose for
    this model on the validation clips (``--guidance-file``), else ``sample.guidance_scale``'s first."""
    import json

    from pipeline.paths import MODELS

    if args.guidance is not None:
        return args.guidance, "--guidance"
    chosen_file = Path(args.guidance_file)
    try:
        chosen = json.loads(chosen_file.read_text()) if chosen_file.is_file() else {}
        if not isinstance(chosen, dict):
            raise ValueError(f"a {type(chosen).__name__}, not a mapping of model names")
        for name, directory in MODELS.items():
            if name in chosen and model.resolve() == directory.resolve():
                scale = float(chosen[name]["guidance_scale"])
                if not (math.isfinite(scale) and scale >= 1):
                    raise ValueError(f"guidance_scale {scale} is not a finite number >= 1")
                return scale, f"chosen on the validation clips, {chosen_file}"
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise PipelineError(f"--guidance-file {chosen_file}: not the sample stage's record ({error}); "
                            "rerun `dvc repro sample`, or pass --guidance") from None
    return settings.sample.guidance_scales[0], "sample.guidance_scale"


def check_writable(out: Path) -> None:
    """Before minutes of diffusion: ``out`` (and the PNG beside it) can be written."""
    for path in (out, out.with_suffix(".png")):
        if path.is_dir():
            raise PipelineError(f"--out {out}: {path} is a directory")
        existed = path.exists()
        try:
            with open(path, "ab"):
                pass
        except OSError as error:
            raise PipelineError(f"--out {out}: cannot write {path} ({error.strerror or error})") from None
        if not existed:
            path.unlink()


def load_model(args, model: Path, spec):
    """(pipeline, vocoder name, vocode): loaded once the cheap checks have passed."""
    from pipeline.models.generate import load_generator
    from pipeline.models.vocoder import vocoder_for

    vocoder, vocode = vocoder_for(args.vocoder, spec, args.vocoder_dir)
    return load_generator(model, args.scheduler), vocoder, vocode


def generate(args) -> None:
    from pipeline.audio.spectrogram import width_for_seconds
    from pipeline.models.generate import generate_images, image_to_audio, save_png, save_wav
    from pipeline.models.inpaint import decode, long_latents

    if args.width is not None and args.prompt_at:
        raise PipelineError("--prompt-at out-paints, so it needs --seconds, not --width (one window)")
    check_writable(Path(args.out))
    model, settings, spec = model_settings(args)
    prompt = resolve_prompt(args.text, settings.subset)
    later = [(at, resolve_prompt(text, settings.subset)) for at, text in args.prompt_at]
    long_form = args.width is None and (args.seconds > spec.clip_seconds or args.prompt_at)
    if long_form and not 0 < args.overlap < spec.clip_seconds:
        raise PipelineError(f"--overlap {args.overlap:g} must be above 0 and below one window "
                            f"({spec.clip_seconds:g} s)")
    late = [at for at, _ in args.prompt_at if at >= args.seconds]
    if long_form and late:
        raise PipelineError(f"--prompt-at {late[0]:g} lies beyond the clip's {args.seconds:g} s")
    guidance, guidance_from = guidance_scale(args, model, settings)
    pipe, vocoder, vocode = load_model(args, model, spec)
    if long_form:
        prompts_at = sorted([(0.0, prompt)] + later, key=lambda item: item[0])
        grey = decode(pipe, long_latents(pipe, prompts_at, args.seconds, args.overlap, spec, args.steps,
                                         guidance, args.seed))
        described = " then ".join(f"{text!r} from {at:g} s" for at, text in prompts_at)
    else:
        height = spec.image_size if args.height is None else args.height
        width = width_for_seconds(args.seconds, spec) if args.width is None else args.width
        grey = generate_images(pipe, [prompt], [args.seed], height, width, args.steps, guidance)[0]
        described = repr(prompt)
    audio = image_to_audio(grey, spec, vocode, args.seed)
    if args.width is None:
        audio = audio[:round(args.seconds * spec.sample_rate)]
    out = Path(args.out)
    save_wav(out, audio, spec.sample_rate)
    save_png(out.with_suffix(".png"), grey)
    print(f"{out} ({len(audio) / spec.sample_rate:.2f} s, {vocoder} vocoder) and {out.with_suffix('.png')} "
          f"({grey.shape[0]}x{grey.shape[1]}) from {described}, guidance {guidance:g} ({guidance_from})")


CROSSFADE_SECONDS = 0.01


def inpaint(args) -> None:
    import numpy as np
    import soundfile as sf
    import torch

    from pipeline.audio.spectrogram import log_mel_to_grey, waveform_to_log_mel
    from pipeline.models.generate import save_png, save_wav
    from pipeline.models.inpaint import inpaint_log_mel, region_mask
    from pipeline.sources.clips import ClipRejected, ClipRules
    from pipeline.sources.local import read_recording

    source, out = Path(args.input), Path(args.out)
    if source.is_dir():
        raise PipelineError(f"{source} is a directory; give one audio file")
    if source.exists() and out.exists() and out.resolve() == source.resolve():
        raise PipelineError(f"--out {out} is the input; write the result to another file")
    try:
        seconds = sf.info(source).duration if source.is_file() else 0.0
    except (sf.LibsndfileError, RuntimeError):
        seconds = 0.0  # read_recording below says what is wrong with it
    if seconds > MAX_INPAINT_SECONDS:
        raise PipelineError(f"{source}: {seconds:.0f} s is longer than the {MAX_INPAINT_SECONDS:g} s inpaint takes "
                            "at once; cut the part around the region out first")
    check_writable(out)
    model, settings, spec = model_settings(args)
    prompt = resolve_prompt(args.text, settings.subset)
    rules = ClipRules(spec.sample_rate, spec.clip_seconds, "pad", "split", -math.inf)
    try:
        original = read_recording(source, rules)
    except ClipRejected as error:
        raise PipelineError(f"{args.input}: {error}") from None
    if len(original) < spec.hop_length:
        raise PipelineError(f"{args.input}: {len(original) / spec.sample_rate:.3f} s is shorter than one mel frame")
    log_mel = waveform_to_log_mel(torch.from_numpy(original), spec)
    mask = region_mask(log_mel.shape[-1], args.start, args.end, args.low_hz, args.high_hz, spec)
    guidance, _ = guidance_scale(args, model, settings)
    pipe, vocoder, vocode = load_model(args, model, spec)
    redrawn = inpaint_log_mel(pipe, log_mel, mask, prompt, spec, args.steps, guidance, args.seed)
    drawn_audio = vocode(redrawn, args.seed)
    if args.low_hz is None and args.high_hz is None:
        # a time region only: outside it the audio is the input's own, cross-faded at the edges
        audio = original.copy()
        first, last = round(args.start * spec.sample_rate), min(round(args.end * spec.sample_rate), len(drawn_audio))
        fade = min(round(CROSSFADE_SECONDS * spec.sample_rate), (last - first) // 2)
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        weight = np.zeros(len(audio), dtype=np.float32)
        weight[first:last] = 1.0
        weight[first:first + fade], weight[last - fade:last] = ramp, ramp[::-1]
        padded = np.pad(drawn_audio, (0, len(audio) - len(drawn_audio)))
        audio = (1 - weight) * audio + weight * padded
    else:
        audio = drawn_audio
    out = Path(args.out)
    save_wav(out, np.clip(audio, -1.0, 1.0), spec.sample_rate)
    save_png(out.with_suffix(".png"), log_mel_to_grey(redrawn, spec).numpy())
    band = "" if args.low_hz is None and args.high_hz is None else \
        f", {args.low_hz or spec.f_min:g}-{args.high_hz or spec.f_max:g} Hz"
    print(f"{out} ({len(audio) / spec.sample_rate:.2f} s, {vocoder} vocoder): {args.start:g}-{args.end:g} s{band} "
          f"of {args.input} redrawn from {prompt!r}")


def _prompt_at(text: str) -> tuple[float, str]:
    time, colon, prompt = text.partition(":")
    try:
        at = float(time)
    except ValueError:
        at = math.nan
    if not colon or not prompt.strip() or not math.isfinite(at) or at < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not SECONDS:PROMPT (e.g. 20:\"Church bell\")")
    return at, prompt.strip()


def _whole_number(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is above {maximum}")
        return value
    return parse


def _finite_number(minimum: float, inclusive: bool = True, maximum: float = math.inf):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {bound}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"{text} is above {maximum:g}")
        return value
    return parse


def _pixels(text: str) -> int:
    value = _whole_number(8)(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"{value} is not a multiple of 8 (the VAE downsamples 8x)")
    return value


def _wav_path(text: str) -> str:
    # the spectrogram PNG is written beside the WAV under the same stem
    if Path(text).suffix.lower() != ".wav":
        raise argparse.ArgumentTypeError(f"{text!r} must end in .wav (the PNG goes beside it)")
    return text


def model_options(command) -> None:
    command.add_argument("--model", default="models/finetuned", help="a diffusers pipeline directory")
    command.add_argument("--steps", type=_whole_number(1), default=25)
    command.add_argument("--guidance", type=_finite_number(1.0),
                         help="classifier-free guidance scale (1 = none); default: the scale the sample "
                              "stage chose for this model on the validation clips (--guidance-file)")
    command.add_argument("--guidance-file", default="metrics/guidance.json",
                         help="the scales the sample stage chose, per model")
    command.add_argument("--seed", type=_whole_number(0, MAX_SEED), default=0)
    command.add_argument("--scheduler", default="dpm++", choices=params.SCHEDULER_NAMES)
    command.add_argument("--vocoder", default="auto", choices=params.VOCODER_CHOICES,
                         help="auto: whichever did better on the validation clips when models/vocoder was trained")
    command.add_argument("--vocoder-dir", default="models/vocoder", help="the neural vocoder (train_vocoder's output)")
    command.add_argument("--griffin-lim-iters", type=_whole_number(1), help="default: the model's SpectrogramSpec")
    command.add_argument("--params", default=str(params.PARAMS_YAML),
                         help="params.yaml for the caption template and a fallback spec")


def listening_report(args) -> None:
    from pipeline.config.spectrogram import format_resolution
    from pipeline.evaluation.report import blind_page, compare_page, tally

    if args.tally:
        for name, score in tally(Path(args.tally), Path(args.key)).items():
            print(f"{name}: {score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}] over {score['answers']} "
                  f"answers (chance {score['chance']:.2f})")
        return
    settings = params.load()
    if args.compare:
        out = Path(args.out or f"reports/compare-{re.sub(r'[^A-Za-z0-9._-]+', '-', args.compare)}.html")
        held = compare_page(args.compare, out, list(settings.sample.resolutions))
        print(f"{out}: {held['pairs']} pairs of samples, {held['beyond']} of {held['scores']} scores differ "
              "beyond the noise")
        return
    size = settings.spec.image_size
    resolution = args.resolution or format_resolution(size, size)
    out = Path(args.out or "reports/blind.html")
    held = blind_page(args.blind, args.seed, out, resolution)
    print(f"{out}: {held['trials']} trials; the key is {held['key']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specldm", description="specldm pipeline tools")
    commands = parser.add_subparsers(dest="command", required=True)

    switch = commands.add_parser(
        "profile", help="rewrite params.yaml from a profile: 'default' (offline CPU) or 'paper'")
    switch.add_argument("name", help="default, or the stem of a file in configs/")
    switch.add_argument("--params", default=str(params.PARAMS_YAML), help="file to write")

    make = commands.add_parser("generate", help="generate a clip (WAV + spectrogram PNG)",
                               epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    make.add_argument("text", help="an AudioSet class name or id, or a full spectrogram prompt")
    length = make.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=_finite_number(0.0, inclusive=False, maximum=MAX_GENERATE_SECONDS),
                        default=10.0, help="audio length, at most 600; beyond one window (clip_seconds) the clip "
                                           "is out-painted window by window")
    length.add_argument("--width", type=_pixels, help="image width in pixels (multiple of 8): one window")
    make.add_argument("--height", type=_pixels, help="image height (multiple of 8; default: training size)")
    make.add_argument("--overlap", type=_finite_number(0.0, inclusive=False), default=2.5,
                      help="seconds each out-painted window continues from the one before")
    make.add_argument("--prompt-at", type=_prompt_at, action="append", default=[], metavar="SECONDS:PROMPT",
                      help="from this second on, out-paint with another prompt (repeatable)")
    make.add_argument("--out", default="clip.wav", type=_wav_path,
                      help="the WAV to write; the PNG goes beside it")
    model_options(make)

    redraw = commands.add_parser("inpaint", help="redraw a time region and/or frequency band of a clip",
                                 epilog=INPAINT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    redraw.add_argument("input", help="an audio file of at most 120 s: any sample rate, mono or stereo")
    redraw.add_argument("text", help="what to draw there: an AudioSet class name or id, or a full prompt")
    redraw.add_argument("--start", type=_finite_number(0.0), required=True, help="region start (seconds)")
    redraw.add_argument("--end", type=_finite_number(0.0), required=True, help="region end (seconds)")
    redraw.add_argument("--low-hz", type=_finite_number(0.0), help="band bottom (default: the mel's lowest)")
    redraw.add_argument("--high-hz", type=_finite_number(0.0), help="band top (default: the mel's highest)")
    redraw.add_argument("--out", required=True, type=_wav_path, help="the WAV to write; the PNG goes beside it")
    model_options(redraw)
    versus = commands.add_parser("compare", help="two revisions' scores with their 95%% intervals, "
                                 "differences beyond the noise marked")
    versus.add_argument("a", nargs="?", default="main", help="a git revision (default: main)")
    versus.add_argument("b", nargs="?", default="workspace",
                        help="a git revision, or 'workspace' for the files as they are (the default)")
    over_seeds = commands.add_parser("seeds", help="the headline scores and targets over training seeds (each "
                                     "but the workspace's a DVC experiment): mean and spread -> metrics/seeds.md")
    over_seeds.add_argument("seeds", nargs="*", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    listen = commands.add_parser("report", help="listening pages beyond metrics/report.html: another revision "
                                 "beside this one, or a blind listening test and its tally")
    mode = listen.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compare", metavar="REV", help="put REV's samples (read through DVC: the cache, or a "
                                                        "remote) beside the workspace's, same prompts and seeds")
    mode.add_argument("--blind", type=int, metavar="N", help="a blind test: N fine-tuned/pre-trained pairs to "
                                                              "prefer, and N fine-tuned clips to name")
    mode.add_argument("--tally", metavar="ANSWERS", help="the answers a blind test page saved: preference and "
                                                         "naming rates with 95%% intervals")
    listen.add_argument("--out", help="the page to write (default: reports/compare-<REV>.html or "
                                      "reports/blind.html); its clips go into a folder of the same name beside it")
    listen.add_argument("--key", default="reports/blind.key.json", help="the blind test's key (for --tally)")
    listen.add_argument("--resolution", help="the sample sets of the blind test (default: the training geometry)")
    listen.add_argument("--seed", type=int, default=0, help="the blind test's draw of trials and their order")
    args = parser.parse_args(argv)

    try:
        if args.command == "profile":
            params.write_profile(args.name, args.params)
            print(f"{args.params} now holds profile '{args.name}'; `dvc status` shows what reruns")
        elif args.command == "generate":
            generate(args)
        elif args.command == "compare":
            from pipeline.evaluation.compare import report

            print(report(args.a, args.b)[0], end="")
        elif args.command == "seeds":
            from pipeline.evaluation.seeds import seeds_table

            print(seeds_table(sorted(set(args.seeds))), end="")
        elif args.command == "report":
            listening_report(args)
        else:
            inpaint(args)
    except PipelineError as error:
        print(f"specldm: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
