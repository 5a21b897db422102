"""Nested training state as safetensors + JSON: nothing in a checkpoint can run code.

A checkpoint may come from a shared DVC remote, so it is never unpickled. The tensors of
a nested state (dicts, lists, tuples, numbers, strings, None, tensors: what a model,
optimizer and LR-scheduler ``state_dict`` hold) go into one safetensors file; the
structure, with each tensor replaced by its key, into one JSON file. Loading rebuilds the
exact state (int dict keys and tuples included), so a resumed run stays bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import PipelineError
from pipeline.files import atomic_path

TENSORS = "state.safetensors"
STRUCTURE = "state.json"


class StateError(PipelineError):
    """A saved state is damaged or was not written by :func:`save_state`."""


def _split(value, tensors: dict, key: str):
    """The JSON-able structure of ``value``; its tensors are moved into ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"tensor": key}
    if isinstance(value, dict):
        keys = list(value)
        kind = "int_dict" if keys and all(isinstance(k, int) for k in keys) else "dict"
        if kind == "dict" and not all(isinstance(k, str) for k in keys):
            raise TypeError(f"{key or 'state'}: dict keys must be all str or all int")
        return {kind: [[k, _split(v, tensors, f"{key}/{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_split(v, tensors, f"{key}/{i}") for i, v in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"{key or 'state'}: cannot store a {type(value).__name__} without pickle")


def _join(node, tensors: dict):
    (kind, content), = node.items()
    if kind == "tensor":
        return tensors[content]
    if kind in ("dict", "int_dict"):
        return {(int(k) if kind == "int_dict" else k): _join(v, tensors) for k, v in content}
    if kind in ("list", "tuple"):
        items = [_join(v, tensors) for v in content]
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        return content
    raise ValueError(f"unknown node kind {kind!r}")


def save_state(state, directory: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = _split(state, tensors, "")
    with atomic_path(directory / TENSORS) as tmp:
        save_file(tensors, tmp)
    with atomic_path(directory / STRUCTURE) as tmp:
        tmp.write_text(json.dumps(structure, sort_keys=True) + "\n")


def load_state(directory: Path):
    """What :func:`save_state` saved in ``directory``, or StateError."""
    try:
        structure = json.loads((directory / STRUCTURE).read_text())
        return _join(structure, load_file(directory / TENSORS))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as error:
        raise StateError(f"{directory}: not a readable training state ({type(error).__name__}: "
                         f"{error})") from None
