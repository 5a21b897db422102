"""The listening page, ``metrics/report.html``: every run's samples heard and seen side by side.

Per class: real test clips, then the first samples of each model x geometry, each with its
spectrogram and a player for each vocoder (the set's own WAV, and the other vocoder's voicing
of the same image), under the class's accuracy with its 95% interval; then the long
out-painted clip with its window seams marked, and the in-painted test clips before and after,
the redrawn region marked. The page references its media by relative path (the samples in
``data/samples/``, what it voices or extracts in ``metrics/report/``), so it opens from a clone
after ``dvc pull`` with no server and no network.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from safetensors import safe_open
from tqdm import tqdm

from pipeline.audio.shards import iter_rows
from pipeline.audio.spectrogram import SpectrogramSpec
from pipeline.config.spectrogram import format_resolution
from pipeline.errors import PipelineError
from pipeline.evaluation.compare import WORKSPACE, compared
from pipeline.evaluation.scoring import REPORT_MEDIA, revoiced_name
from pipeline.files import atomic_path, write_json
from pipeline.models.generate import image_to_audio, save_png, save_wav
from pipeline.models.vocoder import VOCODERS, Vocode, vocoder_for
from pipeline.paths import INPAINTED, METRICS_DIR, MODELS, SAMPLES_DIR
from pipeline.sources.clip_shards import ClipStore

REPORT_PAGE = METRICS_DIR / "report.html"
REPORT_DIR = METRICS_DIR / REPORT_MEDIA
REAL_PER_CLASS = 2  # real test clips shown per class
SAMPLES_PER_SET = 2  # samples shown per class from each model x geometry


@dataclass
class Clip:
    """One tile of the page: a spectrogram, its players (label -> audio file) and what to mark:
    ``seams`` as fractions of the width, ``region`` as (start, end) fractions."""

    title: str
    image: Path
    audio: dict[str, Path] = field(default_factory=dict)
    seams: list[float] = field(default_factory=list)
    region: tuple[float, float] | None = None


def wilson(hits: float, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of a proportion ``hits / n``: honest at the few samples a class has."""
    if n == 0:
        return math.nan, math.nan
    p, z = hits / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def real_clips(shards: Path, index: Path, raw_dir: Path, out_dir: Path,
               also: set[str]) -> tuple[dict[str, list[Clip]], dict[str, Clip]]:
    """The first :data:`REAL_PER_CLASS` single test clips of each class, and the clips ``also``
    names (by id): their image as rendered and their FLAC bytes as acquired, copied out of the shards."""
    sources = {row["id"]: row for row in
               pd.read_parquet(index, columns=["id", "paths", "source_ids"]).to_dict("records")}
    store, shown, by_id = ClipStore(raw_dir), {}, {}
    for row in iter_rows("test", ["id", "image", "target"], shards, single_clips=True):
        clips = shown.setdefault(row["target"], [])
        if len(clips) == REAL_PER_CLASS and row["id"] not in also:
            continue
        source = sources[row["id"]]
        image, audio = out_dir / "real" / f"{row['id']}.png", out_dir / "real" / f"{row['id']}.flac"
        save_png(image, row["image"])
        with atomic_path(audio) as tmp:
            tmp.write_bytes(store.flac(source["paths"][0], source["source_ids"][0]))
        by_id[row["id"]] = Clip(f"real {row['id']}", image, {"as acquired": audio})
        if len(clips) < REAL_PER_CLASS:
            clips.append(by_id[row["id"]])
    return shown, by_id


def sample_clips(folder: Path, revoiced_dir: Path, progress) -> dict[str, list[Clip]]:
    """The first :data:`SAMPLES_PER_SET` samples of each class in a set: the set's WAV, and the
    other vocoder's voicing of the same image where ``evaluate`` re-voiced it (the first
    ``evaluate.revocode_per_class`` of each class)."""
    prompts = pd.read_csv(folder / "prompts.csv")
    chosen: dict[str, list[Clip]] = {}
    for row in prompts.groupby("class_id", sort=False).head(SAMPLES_PER_SET).itertuples():
        audio = {row.vocoder: folder / row.wav} if isinstance(getattr(row, "wav", None), str) else {}
        for name in VOCODERS:
            if name not in audio and (revoiced_dir / revoiced_name(row.file, name)).is_file():
                audio[name] = revoiced_dir / revoiced_name(row.file, name)
        progress.update(1)
        chosen.setdefault(row.class_id, []).append(Clip(f"seed {row.seed}", folder / row.file, audio))
    return chosen


def longform_clips(folder: Path, out_dir: Path, spec: SpectrogramSpec, name: str, vocode: Vocode,
                   progress) -> dict[str, Clip]:
    """Each class's long out-painted clip, voiced, with the frames where each window's new part begins."""
    chosen = {}
    for row in pd.read_csv(folder / "prompts.csv").itertuples():
        grey = np.asarray(Image.open(folder / row.file).convert("L"))
        path = out_dir / f"{Path(row.file).stem}.wav"
        save_wav(path, image_to_audio(grey, spec, vocode, int(row.seed)), spec.sample_rate)
        seams = [int(frame) / grey.shape[1] for frame in str(row.seam_frames).split()]
        chosen[row.class_id] = Clip(f"{grey.shape[1] * spec.clip_seconds / spec.image_size:.0f} s, seed {row.seed}",
                                    folder / row.file, {name: path}, seams=seams)
        progress.update(1)
    return chosen


def inpaint_clips(folder: Path, tests: dict[str, Clip], out_dir: Path, spec: SpectrogramSpec, name: str,
                  vocode: Vocode, progress) -> dict[str, tuple[Clip, Clip]]:
    """Per class drawn, its first in-painted test clip: (before, after), the region redrawn
    marked on both."""
    rows = pd.read_csv(folder / "prompts.csv")
    if not len(rows):
        return {}
    chosen: dict[str, tuple[Clip, Clip]] = {}
    with safe_open(str(folder / INPAINTED), framework="pt") as drawn:  # the rows shown, not the whole set
        log_mels, masks = drawn.get_slice("log_mel"), drawn.get_slice("mask")
        for k, row in enumerate(rows.itertuples()):
            if row.class_id in chosen:
                continue
            log_mel, mask = log_mels[k], masks[k].bool()
            frames = mask.any(dim=0).nonzero()[:, 0]
            region = (int(frames[0]) / mask.shape[1], (int(frames[-1]) + 1) / mask.shape[1])
            path = out_dir / f"{Path(row.file).stem}.wav"
            save_wav(path, vocode(log_mel, int(row.seed)), spec.sample_rate)
            before = tests[row.test_id]
            chosen[row.class_id] = (
                Clip(f"before: {row.test_id}", before.image, before.audio, region=region),
                Clip(f"after: redrawn as {row.class_name}", folder / row.file, {name: path}, region=region))
            progress.update(1)
    return chosen


def inpaint_test_ids(folder: Path) -> set[str]:
    """The test clips under each class's first in-painted clip (what :func:`inpaint_clips` shows)."""
    rows = pd.read_csv(folder / "prompts.csv")
    return set(rows.groupby("class_id", sort=False).head(1).test_id)


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h2 { border-top: 1px solid #ccc; padding-top: .6em; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; margin: .4em 0 1em; }
.clip { border: 1px solid #ddd; padding: 6px; max-width: 100%; }
.clip figure { position: relative; margin: 0; display: inline-block; line-height: 0; }
.clip img { display: block; height: 96px; max-width: 100%; image-rendering: pixelated; }
.clip.long img { height: 96px; width: 960px; }
.seam { position: absolute; top: 0; bottom: 0; width: 0; border-left: 2px dashed #e33; }
.region { position: absolute; top: 0; bottom: 0; background: rgba(255, 200, 0, .3); border: 1px solid #d90; }
.clip audio, .trial audio { display: block; width: 260px; height: 32px; }
.trial { border: 1px solid #ddd; padding: 6px 10px; margin: 8px 0; }
button.picked { background: #2a6; color: #fff; }
.label { font-size: 12px; color: #555; }
tr.beyond { background: #fde8c8; font-weight: 600; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
"""


class Page:
    """The HTML of the page, with every path written relative to where the page lies."""

    def __init__(self, path: Path):
        self.path, self.parts = path, []

    def href(self, target: Path) -> str:
        return html.escape(Path(os.path.relpath(target.resolve(), self.path.parent.resolve())).as_posix())

    def add(self, text: str) -> None:
        self.parts.append(text)

    def player(self, path: Path, label: str = "") -> str:
        """A player of ``path``'s sound, under ``label`` if one is given; it reads only the file's
        header until it is played, so a page of hundreds of clips opens at once."""
        caption = f'<div class="label">{html.escape(label)}</div>' if label else ""
        return f'{caption}<audio controls preload="metadata" src="{self.href(path)}"></audio>'

    def clip(self, clip: Clip, long: bool = False) -> None:
        marks = "".join(f'<span class="seam" style="left:{100 * s:.3f}%"></span>' for s in clip.seams)
        if clip.region:
            start, end = clip.region
            marks += f'<span class="region" style="left:{100 * start:.3f}%;width:{100 * (end - start):.3f}%"></span>'
        players = "".join(self.player(path, label) for label, path in clip.audio.items())
        self.add(f'<div class="clip{" long" if long else ""}"><div class="label">{html.escape(clip.title)}</div>'
                 f'<figure><img src="{self.href(clip.image)}" alt="{html.escape(clip.title)}">{marks}</figure>'
                 f'{players}</div>')

    def row(self, title: str, clips: list[Clip], long: bool = False) -> None:
        self.add(f"<h4>{html.escape(title)}</h4><div class=\"row\">")
        for clip in clips:
            self.clip(clip, long)
        self.add("</div>")

    def write(self, title: str) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
                           f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(self.parts)
                           + "\n</body></html>\n")


def class_scores(per_class: pd.DataFrame, class_id: str) -> str:
    """The class's accuracy under each model x geometry, with its 95% Wilson interval."""
    rows = per_class[per_class.class_id == class_id]
    cells = []
    for row in rows.itertuples():
        low, high = wilson(row.accuracy * row.samples, int(row.samples))
        cells.append(f"<tr><td>{html.escape(row.model)}</td><td>{html.escape(row.resolution)}</td>"
                     f"<td>{row.accuracy:.2f} [{low:.2f}, {high:.2f}]</td><td>{int(row.samples)}</td></tr>")
    return ("<table><tr><th>model</th><th>geometry</th><th>judge heard the class (95% interval)</th>"
            f"<th>samples</th></tr>{''.join(cells)}</table>")


def build_report(samples: Path, shards: Path, index: Path, raw_dir: Path, metrics_dir: Path,
                 resolutions: list[str], spec: SpectrogramSpec, vocoder_dir: Path, out_dir: Path,
                 page_path: Path) -> dict:
    """Write ``page_path`` and the media it needs into ``out_dir`` (beside what ``evaluate`` put
    there); returns what the page holds."""
    real, tests = real_clips(shards, index, raw_dir, out_dir, inpaint_test_ids(samples / "inpaint"))
    sets = [(model, resolution) for model in MODELS for resolution in resolutions]
    written = pd.read_csv(samples / "finetuned" / resolutions[0] / "prompts.csv").vocoder.dropna()
    name, vocode = vocoder_for(written.iloc[0] if len(written) else "auto", spec, vocoder_dir)
    progress = tqdm(desc="listening page", unit="clip", file=sys.stderr)
    drawn = {s: sample_clips(samples / s[0] / s[1], out_dir / s[0] / s[1], progress) for s in sets}
    longform = longform_clips(samples / "longform", out_dir / "longform", spec, name, vocode, progress)
    inpainted = inpaint_clips(samples / "inpaint", tests, out_dir / "inpaint", spec, name, vocode, progress)
    progress.close()
    per_class = pd.read_csv(metrics_dir / "per_class.csv")
    names = dict(zip(per_class.class_id, per_class.class_name))
    page = Page(page_path)
    page.add("<h1>specldm: what this run made</h1>")
    page.add(f"<p>Spectrograms at {spec.sample_rate} Hz, {spec.n_mels} mel bands, {spec.clip_seconds:g} s a "
             f"{format_resolution(spec.image_size, spec.image_size)} image. Scores: <code>metrics/table.md</code> "
             "(below), each with its 95% interval.</p>")
    table = metrics_dir / "table.md"
    if table.exists():
        page.add(f"<pre>{html.escape(table.read_text())}</pre>")
    for class_id in sorted(names, key=names.get):
        page.add(f'<h2 id="{html.escape(class_id)}">{html.escape(names[class_id])}</h2>')
        page.add(class_scores(per_class, class_id))
        page.row("real test clips", real.get(class_id, []))
        for model, resolution in sets:
            page.row(f"{model}, {resolution}", drawn[(model, resolution)].get(class_id, []))
        if class_id in longform:
            page.row("long, out-painted window by window (dashed: where each window's new part begins)",
                     [longform[class_id]], long=True)
        if class_id in inpainted:
            page.row("in-painted from another class's test clip (shaded: the region redrawn)",
                     list(inpainted[class_id]))
    page.write("specldm listening page")
    return {"classes": len(names), "real": sum(map(len, real.values())),
            "samples": sum(len(c) for d in drawn.values() for c in d.values()),
            "longform": len(longform), "inpainted": len(inpainted)}


def revision_file(path: Path, revision: str, root: Path, copies: Path) -> Path:
    """``path`` (relative to the repository ``root``) as the workspace has it, or as ``revision``
    made it: read through DVC (from the cache, or a remote it can reach) into ``copies``."""
    if revision == WORKSPACE:
        return root / path
    import dvc.api

    target = copies / path
    try:
        data = dvc.api.read(path.as_posix(), repo=str(root), rev=revision, mode="rb")
    except Exception as error:  # dvc raises many kinds: each means the same to a user here
        raise PipelineError(f"{revision}: cannot read {path} ({type(error).__name__}: {error}); "
                            f"`dvc pull` that revision's outputs, or check that it ran `sample`") from None
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def comparison_table(rows: list[dict], revision: str) -> str:
    beyond = ' class="beyond"'
    cells = "".join(f"<tr{beyond if r['beyond'] else ''}><td>{html.escape(r['key'])}</td>"
                    f"<td>{html.escape(r['a'])}</td><td>{html.escape(r['b'])}</td><td>{r['delta']:+.4g}</td>"
                    f"<td>{'yes' if r['beyond'] else ''}</td></tr>" for r in rows)
    return (f"<table><tr><th>score</th><th>{html.escape(revision)}</th><th>{WORKSPACE}</th><th>difference</th>"
            f"<th>beyond noise</th></tr>{cells}</table>")


def compare_page(revision: str, page_path: Path, resolutions: list[str], root: Path = Path(".")) -> dict:
    """``page_path``: each class's first samples of every model x geometry, as ``revision`` and
    the workspace drew them from the same prompt and seed, side by side, under the two
    revisions' scores (differences beyond the noise marked, as ``specldm compare``). What the
    other revision made is copied beside the page, into a folder of the page's name."""
    copies = page_path.with_suffix("")
    shutil.rmtree(copies, ignore_errors=True)
    page = Page(page_path)
    rows = compared(revision, WORKSPACE, root)
    page.add(f"<h1>{html.escape(revision)} against the {WORKSPACE}</h1>")
    page.add(f"<p>Same prompts, same seeds. {sum(r['beyond'] for r in rows)} of {len(rows)} scores differ beyond "
             "the noise (95% intervals that do not overlap).</p>")
    page.add(comparison_table(rows, revision))
    shown = 0
    for model in MODELS:
        for resolution in resolutions:
            folder = SAMPLES_DIR / model / resolution
            ours = pd.read_csv(root / folder / "prompts.csv")
            theirs = pd.read_csv(revision_file(folder / "prompts.csv", revision, root, copies))
            theirs = {(row.class_id, row.seed): row for row in theirs.itertuples()}
            page.add(f"<h2>{model}, {html.escape(resolution)}</h2>")
            for row in ours.groupby("class_id", sort=False).head(SAMPLES_PER_SET).itertuples():
                sides = []
                for name, side in ((revision, theirs.get((row.class_id, row.seed))), (WORKSPACE, row)):
                    if side is None:
                        continue
                    audio = {}
                    if isinstance(getattr(side, "wav", None), str):
                        audio[side.vocoder] = revision_file(folder / side.wav, name, root, copies)
                    sides.append(Clip(f"{name}: guidance {side.guidance}", revision_file(folder / side.file, name,
                                                                                        root, copies), audio))
                page.row(f"{row.class_name}, seed {row.seed}", sides)
                shown += 1
    page.write(f"specldm: {revision} against the {WORKSPACE}")
    return {"pairs": shown, "scores": len(rows), "beyond": sum(r["beyond"] for r in rows)}


NAME_CHOICES = 4  # class names offered in a naming trial: the prompted one and 3 others


def blind_page(trials: int, seed: int, page_path: Path, resolution: str, root: Path = Path(".")) -> dict:
    """A blind listening test: ``trials`` pairs of the fine-tuned and the pre-trained model's
    samples of one prompt and seed, in random order (which sounds more like the prompt?), and
    as many fine-tuned samples to name among :data:`NAME_CHOICES` classes. The clips are copied
    under neutral names beside the page; which was which goes to ``<page>.key.json``, which the
    page never reads. The page saves the answers as a JSON file for ``specldm report --tally``."""
    folders = {model: root / SAMPLES_DIR / model / resolution for model in MODELS}
    sets = {model: pd.read_csv(folder / "prompts.csv").dropna(subset=["wav"]) for model, folder in folders.items()}
    pairs = sets["finetuned"].merge(sets["pretrained"], on=["class_id", "class_name", "prompt", "seed"],
                                    suffixes=("_finetuned", "_pretrained"))
    if not len(pairs):
        raise PipelineError(f"{SAMPLES_DIR}/*/{resolution}: no prompt and seed with a WAV from both models; "
                            "run `dvc repro sample` (sample.wavs_per_class > 0)")
    rng = np.random.default_rng(seed)
    chosen = pairs.iloc[rng.permutation(len(pairs))[:trials]]
    names = sorted(set(sets["finetuned"].class_name))
    clips_dir = page_path.with_suffix("")
    shutil.rmtree(clips_dir, ignore_errors=True)
    clips_dir.mkdir(parents=True)
    page, key, html_trials = Page(page_path), {}, []

    def copy(model: str, wav: str, name: str) -> Path:
        target = clips_dir / f"{name}.wav"
        shutil.copyfile(folders[model] / wav, target)
        return target

    for k, row in enumerate(chosen.itertuples()):
        order = ["finetuned", "pretrained"] if rng.random() < 0.5 else ["pretrained", "finetuned"]
        sides = {label: copy(model, getattr(row, f"wav_{model}"), f"pair-{k:03d}-{label.lower()}")
                 for label, model in zip("AB", order)}
        key[f"pair-{k:03d}"] = {"kind": "pair", "finetuned": "AB"[order.index("finetuned")], "class": row.class_name}
        players = "".join(page.player(path, label) for label, path in sides.items())
        html_trials.append(f'<div class="trial" data-trial="pair-{k:03d}"><p>Which sounds more like '
                           f'<b>{html.escape(row.class_name)}</b>?</p>{players}'
                           '<button data-answer="A">A</button> <button data-answer="B">B</button></div>')
    for k, row in enumerate(chosen.itertuples()):
        others = [n for n in names if n != row.class_name]
        options = [row.class_name, *rng.choice(others, min(NAME_CHOICES - 1, len(others)), replace=False)]
        options = [options[i] for i in rng.permutation(len(options))]
        path = copy("finetuned", row.wav_finetuned, f"name-{k:03d}")
        key[f"name-{k:03d}"] = {"kind": "name", "class": row.class_name, "options": len(options)}
        buttons = " ".join(f'<button data-answer="{html.escape(o)}">{html.escape(o)}</button>' for o in options)
        html_trials.append(f'<div class="trial" data-trial="name-{k:03d}"><p>What is this the sound of?</p>'
                           f'{page.player(path)}{buttons}</div>')
    key_path = page_path.with_suffix(".key.json")
    write_json(key_path, {"page": page_path.name, "seed": seed, "resolution": resolution, "trials": key})
    page.add("<h1>Blind listening test</h1><p>Listen to each trial and click your answer (you may change it). "
             'Then <button id="save">save the answers</button> and run <code>specldm report --tally '
             f"answers.json --key {html.escape(key_path.as_posix())}</code>. "
             '<span id="count">0</span> of ' f"{len(key)} answered.</p>")
    page.add("\n".join(html_trials))
    page.add(BLIND_SCRIPT.replace("PAGE_NAME", json.dumps(page_path.name)))
    page.write("specldm: blind listening test")
    return {"trials": len(key), "key": key_path}


BLIND_SCRIPT = """<script>
const answers = {};
document.querySelectorAll(".trial button").forEach(button => button.addEventListener("click", () => {
  const trial = button.closest(".trial");
  answers[trial.dataset.trial] = button.dataset.answer;
  trial.querySelectorAll("button").forEach(b => b.classList.toggle("picked", b === button));
  document.getElementById("count").textContent = Object.keys(answers).length;
}));
document.getElementById("save").addEventListener("click", () => {
  const blob = new Blob([JSON.stringify({page: PAGE_NAME, answers}, null, 1)], {type: "application/json"});
  const link = Object.assign(document.createElement("a"), {href: URL.createObjectURL(blob), download: "answers.json"});
  link.click();
});
</script>"""


def tally(answers_path: Path, key_path: Path) -> dict:
    """How often the listener preferred the fine-tuned sample, and named its class, each with its
    95% Wilson interval and the chance level it is to be read against."""
    answers, key = json.loads(answers_path.read_text()), json.loads(key_path.read_text())
    if answers.get("page") != key["page"]:
        raise PipelineError(f"{answers_path} answers {answers.get('page')!r}, but {key_path} is the key of "
                            f"{key['page']!r}")
    preferred, named, options = [], [], []
    for trial, answer in answers["answers"].items():
        if trial not in key["trials"]:
            raise PipelineError(f"{answers_path}: trial {trial!r} is not in {key_path}")
        truth = key["trials"][trial]
        if truth["kind"] == "pair":
            preferred.append(answer == truth["finetuned"])
        else:
            named.append(answer == truth["class"])
            options.append(truth["options"])
    scores = {"finetuned_preferred": (preferred, 0.5),
              "named_class": (named, float(np.mean([1 / n for n in options])) if options else math.nan)}
    return {name: {"value": sum(hits) / len(hits) if hits else math.nan,
                   **dict(zip(("low", "high"), wilson(sum(hits), len(hits)))), "chance": chance, "answers": len(hits)}
            for name, (hits, chance) in scores.items()}
