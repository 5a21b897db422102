"""The AudioSet ontology (632 classes, a DAG) and the segment CSVs that label clips with it."""

from __future__ import annotations

import csv
import difflib
import json
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pipeline.errors import PipelineError

META_DIR = Path(__file__).resolve().parent.parent / "data" / "meta"
ONTOLOGY_JSON = META_DIR / "ontology.json"
CLASS_LABELS_CSV = META_DIR / "class_labels_indices.csv"

CAPTION_TEMPLATE = "a spectrogram of the sound of {name}"
VERBOSE_JOINER = ", a kind of "


class OntologyError(PipelineError, ValueError):
    """A class name or id is unknown, or a metadata file is malformed."""


@dataclass(frozen=True)
class AudioClass:
    id: str
    name: str
    description: str
    child_ids: tuple[str, ...]
    restrictions: tuple[str, ...]

    @property
    def abstract(self) -> bool:
        return "abstract" in self.restrictions

    @property
    def blacklisted(self) -> bool:
        return "blacklist" in self.restrictions


class Ontology:
    """Id <-> name lookups and the parent/child structure of the AudioSet ontology.

    A class may have several parents ("Cowbell" is under Bell, Percussion and Cattle).
    """

    def __init__(self, classes: list[AudioClass], trainable_ids: list[str]):
        self.classes = {c.id: c for c in classes}
        self._by_name = {c.name.casefold(): c.id for c in classes}
        parents: dict[str, list[str]] = {c.id: [] for c in classes}
        for c in classes:
            for child in c.child_ids:
                if child not in parents:
                    raise OntologyError(f"class {c.id} lists unknown child {child}")
                parents[child].append(c.id)
        self._parents = {k: tuple(v) for k, v in parents.items()}
        unknown = [i for i in trainable_ids if i not in self.classes]
        if unknown:
            raise OntologyError(f"trainable labels not in the ontology: {unknown[:5]}")
        self.trainable_ids = tuple(trainable_ids)

    @classmethod
    def load(cls, ontology_json: Path = ONTOLOGY_JSON,
             class_labels_csv: Path = CLASS_LABELS_CSV) -> Ontology:
        raw = json.loads(Path(ontology_json).read_text())
        classes = [AudioClass(id=r["id"], name=r["name"], description=r.get("description", ""),
                              child_ids=tuple(r.get("child_ids", ())),
                              restrictions=tuple(r.get("restrictions", ())))
                   for r in raw]
        return cls(classes, read_class_labels(class_labels_csv))

    def __len__(self) -> int:
        return len(self.classes)

    def __contains__(self, class_id: str) -> bool:
        return class_id in self.classes

    def __getitem__(self, class_id: str) -> AudioClass:
        try:
            return self.classes[class_id]
        except KeyError:
            raise OntologyError(f"unknown AudioSet class id {class_id!r}") from None

    def name(self, class_id: str) -> str:
        return self[class_id].name

    def resolve(self, label: str, suggest: bool = True) -> str:
        """An id (``/m/015jpf``) or display name (``Dial tone``, any case) -> id. An unknown
        one is an OntologyError naming close names (``suggest``: a millisecond's search)."""
        label = label.strip()
        if label in self.classes:
            return label
        found = self._by_name.get(label.casefold())
        if found:
            return found
        names = [c.name for c in self.classes.values()]
        close = difflib.get_close_matches(label, names, n=3, cutoff=0.5) if suggest else []
        hint = f"; did you mean {', '.join(repr(n) for n in close)}?" if close else ""
        raise OntologyError(f"unknown AudioSet class {label!r}{hint}")

    def parents(self, class_id: str) -> tuple[str, ...]:
        self[class_id]
        return self._parents[class_id]

    def children(self, class_id: str) -> tuple[str, ...]:
        return self[class_id].child_ids

    def ancestors(self, class_id: str) -> list[str]:
        """All ancestors, nearest first (breadth-first over every parent)."""
        seen: dict[str, None] = {}
        queue = deque(self.parents(class_id))
        while queue:
            current = queue.popleft()
            if current not in seen:
                seen[current] = None
                queue.extend(self._parents[current])
        return list(seen)

    def descendants(self, class_id: str) -> set[str]:
        """The class and every class below it."""
        found = {self[class_id].id}
        queue = deque(self.children(class_id))
        while queue:
            current = queue.popleft()
            if current not in found:
                found.add(current)
                queue.extend(self.children(current))
        return found

    def depth(self, class_id: str) -> int:
        """Edges on the shortest path up to a top-level class (top-level classes are 0)."""
        return self._depths[self[class_id].id]

    @cached_property
    def _depths(self) -> dict[str, int]:
        depths = {i: 0 for i, p in self._parents.items() if not p}
        queue = deque(depths)
        while queue:
            current = queue.popleft()
            for child in self.classes[current].child_ids:
                if child not in depths:
                    depths[child] = depths[current] + 1
                    queue.append(child)
        return depths

    def is_trainable(self, class_id: str) -> bool:
        return class_id in self._trainable

    @cached_property
    def _trainable(self) -> frozenset[str]:
        return frozenset(self.trainable_ids)

    def is_target(self, class_id: str) -> bool:
        """Whether a class may be a generation target: trainable, not abstract, not blacklisted."""
        c = self[class_id]
        return self.is_trainable(class_id) and not c.abstract and not c.blacklisted

    def hierarchy(self, class_id: str) -> list[str]:
        """The class and its first-listed-parent chain up to the top, as names."""
        names = [self.name(class_id)]
        current = class_id
        while self._parents[current]:
            current = self._parents[current][0]
            names.append(self.name(current))
        return names

    def caption(self, class_id: str, template: str = CAPTION_TEMPLATE,
                verbose: bool = False) -> str:
        """``template`` filled with the class name, e.g. "a spectrogram of the sound of Dial tone".

        ``verbose`` names the hierarchy too: "... of Dial tone, a kind of Telephone, a kind
        of Alarm, a kind of Sounds of things".
        """
        name = VERBOSE_JOINER.join(self.hierarchy(class_id)) if verbose else self.name(class_id)
        return template.format(name=name)


def read_class_labels(path: Path = CLASS_LABELS_CSV) -> list[str]:
    """The trainable label ids, in index order, from ``class_labels_indices.csv``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"index", "mid", "display_name"}:
        raise OntologyError(f"{path}: expected columns index,mid,display_name")
    for expected, row in enumerate(rows):
        if int(row["index"]) != expected:
            raise OntologyError(f"{path}: row {expected + 2} has index {row['index']}")
    return [row["mid"] for row in rows]
