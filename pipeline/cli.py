"""The ``specldm`` command: ``specldm profile`` and ``specldm generate``.

torch, diffusers and the ontology are imported only by the commands that use them, so
`specldm profile` answers at once.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pipeline import params
from pipeline.errors import PipelineError

GENERATE_EXAMPLES = """examples:
  specldm generate "Church bell" --out bell.wav
  specldm generate "Church bell" --vocoder griffin_lim --out bell-gl.wav
  specldm generate "a spectrogram of the sound of Rain" --seconds 5 --out rain.wav
  specldm generate /m/03w41f --height 64 --width 400 --steps 50 --guidance 5 --seed 3
"""


def resolve_prompt(text: str, template: str) -> str:
    """Text that mentions a spectrogram is a prompt as the model was trained on; anything
    else must name an AudioSet class (display name or id), which becomes that caption."""
    if "spectrogram" in text.lower():
        return text
    from pipeline.ontology import Ontology

    ontology = Ontology.load()
    return ontology.caption(ontology.resolve(text), template)


def generate(args) -> None:
    from pipeline.audio.spectrogram import width_for_seconds
    from pipeline.errors import ModelError
    from pipeline.models.diffusion import read_model_spec
    from pipeline.models.generate import generate_images, image_to_audio, load_generator, save_png, save_wav
    from pipeline.models.vocoder import vocoder_for

    model = Path(args.model)
    if not (model / "model_index.json").exists():
        raise ModelError(f"no model at {model}; run `make run` (or `dvc repro train`) first, "
                         "or point --model at a diffusers pipeline directory")
    settings = params.load(args.params) if Path(args.params).exists() else params.Params()
    spec = read_model_spec(model) or settings.spec
    prompt = resolve_prompt(args.text, settings.subset.caption_template)
    height = spec.image_size if args.height is None else args.height
    width = width_for_seconds(args.seconds, spec) if args.width is None else args.width
    if args.griffin_lim_iters is not None:
        spec = spec.replace(griffin_lim_iters=args.griffin_lim_iters)
    vocoder, vocode = vocoder_for(args.vocoder, spec, args.vocoder_dir)
    pipe = load_generator(model, args.scheduler)
    grey = generate_images(pipe, [prompt], [args.seed], height, width, args.steps, args.guidance)[0]
    audio = image_to_audio(grey, spec, vocode, args.seed)
    if args.width is None:
        audio = audio[:round(args.seconds * spec.sample_rate)]
    out = Path(args.out)
    save_wav(out, audio, spec.sample_rate)
    save_png(out.with_suffix(".png"), grey)
    print(f"{out} ({len(audio) / spec.sample_rate:.2f} s, {vocoder} vocoder) and {out.with_suffix('.png')} "
          f"({height}x{width}) from {prompt!r}")


def _whole_number(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    return parse


def _finite_number(minimum: float, inclusive: bool = True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {bound}")
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
    make.add_argument("--model", default="models/finetuned", help="a diffusers pipeline directory")
    make.add_argument("--out", default="clip.wav", type=_wav_path,
                      help="the WAV to write; the PNG goes beside it")
    length = make.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=_finite_number(0.0, inclusive=False), default=10.0,
                        help="audio length (sets the width)")
    length.add_argument("--width", type=_pixels, help="image width in pixels (multiple of 8)")
    make.add_argument("--height", type=_pixels, help="image height (multiple of 8; default: training size)")
    make.add_argument("--steps", type=_whole_number(1), default=25)
    make.add_argument("--guidance", type=_finite_number(1.0), default=3.0,
                      help="classifier-free guidance scale (1 = none)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--scheduler", default="dpm++", choices=params.SCHEDULER_NAMES)
    make.add_argument("--vocoder", default="auto", choices=params.VOCODER_CHOICES,
                      help="auto: whichever did better on the validation clips when models/vocoder was trained")
    make.add_argument("--vocoder-dir", default="models/vocoder", help="the neural vocoder (train_vocoder's output)")
    make.add_argument("--griffin-lim-iters", type=_whole_number(1),
                      help="default: the model's SpectrogramSpec")
    make.add_argument("--params", default=str(params.PARAMS_YAML),
                      help="params.yaml for the caption template and a fallback spec")
    args = parser.parse_args(argv)

    try:
        if args.command == "profile":
            params.write_profile(args.name, args.params)
            print(f"{args.params} now holds profile '{args.name}'; `dvc status` shows what reruns")
        else:
            generate(args)
    except PipelineError as error:
        print(f"specldm: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
