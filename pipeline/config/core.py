"""Reading params.yaml: YAML without aliases, types checked against a section's dataclass,
errors that name the bad key; :func:`load_sections` gives a stage the sections it reads."""

from __future__ import annotations

import dataclasses
import math
import reprlib
import string
import types
import typing
from pathlib import Path

import yaml

from pipeline.audio.spectrogram import SpecError
from pipeline.errors import PipelineError

# Relative to the working directory, as DVC runs every stage from the repository root.
PARAMS_YAML = Path("params.yaml")
# The top-level sections of params.yaml (pipeline.params.Params has one field for each).
SECTION_NAMES = ("source", "download", "engine", "spectrogram", "subset", "render", "model", "pretrain",
                 "train", "evaluator", "vocoder", "sample", "evaluate")


class ParamsError(PipelineError, ValueError):
    """params.yaml has an unknown key, a wrong type or an impossible value."""


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"{key}: {message}")


_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def show(value) -> str:
    """A value as an error message quotes it: bounded, so that a huge (or YAML-alias-bombed)
    value cannot make the message itself the problem."""
    return _SHORT.repr(value)


def require_template(template: str, key: str, fields: tuple[str, ...]) -> None:
    """A str.format template that uses every one of ``fields`` and nothing else."""
    try:
        fields_used = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                       if name is not None]
    except ValueError as error:
        raise ParamsError(f"{key}: {show(template)} is not a valid template ({error})") from None
    for name, spec, conversion in fields_used:
        # a format spec or conversion ({ytid:d}, {ytid!z}) would fail, or allocate, on every value
        require(not spec and conversion is None, key,
                f"{{{name}}} takes no format spec or conversion; write it plain")
    used = {name for name, _, _ in fields_used}
    unknown = sorted(used - set(fields))
    require(not unknown, key, f"unknown placeholder {{{unknown[0] if unknown else ''}}}; "
                               f"the known ones are {', '.join(f'{{{name}}}' for name in fields)}")
    for name in fields:
        require(name in used, key, f"must contain the placeholder {{{name}}}")


def check_type(value, annotation, key: str):
    """``value`` converted to ``annotation`` (int -> float, list -> tuple), or ParamsError."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, key)
    if origin is tuple:
        require(isinstance(value, (list, tuple)), key, f"expected a list, got {show(value)}")
        (item_type, _ellipsis) = typing.get_args(annotation)
        return tuple(check_type(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        refusals = []
        for option in typing.get_args(annotation):
            try:
                return check_type(value, option, key)
            except ParamsError as error:
                # the option of the value's own shape (a list, or not) says best what is wrong
                if (typing.get_origin(option) is tuple) == isinstance(value, (list, tuple)):
                    refusals.append(error)
        raise refusals[0] if refusals else ParamsError(f"{key}: {show(value)} is not {annotation}")
    if annotation is type(None):
        require(value is None, key, f"expected null, got {show(value)}")
        return value
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        require(ok, key, f"expected a number, got {show(value)}")
        require(math.isfinite(value), key, f"must be a finite number, got {value}")
        return float(value)
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        require(ok, key, f"expected an integer, got {show(value)}")
        return value
    require(isinstance(value, annotation), key,
            f"expected {annotation.__name__}, got {type(value).__name__} {show(value)}")
    return value


def build(cls, raw, prefix: str):
    require(isinstance(raw, dict), prefix or "params", f"expected a mapping, got {show(raw)}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(f"{where}{unknown[0]}: unknown key; known keys here: "
                          f"{', '.join(sorted(hints))}")
    values = {name: check_type(value, hints[name], f"{prefix}.{name}".lstrip("."))
              for name, value in raw.items()}
    try:
        return cls(**values)
    except SpecError as error:
        raise ParamsError(str(error)) from None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: params never need them, and a few nested aliases
    ("billion laughs") would expand to gigabytes before any key is checked."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in params",
                                              event.start_mark)
        return super().compose_node(parent, index)


def read_yaml(path: Path):
    try:
        return yaml.load(path.read_text(), Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None


def read_params(path: Path | str) -> dict:
    """The mapping in a params file, refused when missing, empty or not a mapping of sections."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    raw = read_yaml(path)
    if raw is None:
        # every stage would silently run on the defaults, whatever the user meant to write
        raise ParamsError(f"{path}: is empty; write a profile into it with `specldm profile default`")
    require(isinstance(raw, dict), "params", f"expected a mapping, got {show(raw)}")
    unknown = sorted(set(raw) - set(SECTION_NAMES))
    if unknown:
        raise ParamsError(f"{unknown[0]}: unknown key; known keys here: {', '.join(sorted(SECTION_NAMES))}")
    return raw


class Sections:
    """Validated sections of params.yaml, as attributes (``params.train``). A section may check
    itself against the others loaded with it (``check_against(sections)``)."""

    def __init__(self, **sections) -> None:
        self.__dict__.update(sections)
        self.check_across()

    def check_across(self) -> None:
        for section in vars(self).values():
            if hasattr(section, "check_against"):
                section.check_against(self)

    def __getattr__(self, name: str):
        raise AttributeError(f"this stage did not load the params section {name!r}: add it to its load_sections")

    def to_dict(self) -> dict:
        def plain(value):
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value
        return {name: plain(dataclasses.asdict(section)) for name, section in vars(self).items()}


def load_sections(path: Path | str = PARAMS_YAML, **sections: type) -> Sections:
    """The named sections of the params file, each validated (keys, types, values); missing
    keys take the embedded defaults. Sections not named are not read."""
    raw = read_params(path)
    return Sections(**{name: build(cls, raw.get(name, {}), name) for name, cls in sections.items()})
