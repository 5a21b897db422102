"""``data/raw/clips/part-NNNNN.parquet``: the clips as FLAC bytes, ``source.shard_clips`` manifest
rows to a shard.

DVC hashes, checks and pushes a tracked folder file by file, and an object store takes one
request per file: at AudioSet's 2 M segments one file per clip costs hours of bookkeeping
before any audio moves. So clips travel in shards, each a Parquet file of ``id``, ``flac``
(the clip file's bytes, soundfile-readable as they are) and ``sha256`` of those bytes.

Which shard a row belongs to is fixed by its position in the manifest, so the shards'
bytes follow from the clips alone, whichever engine and however many workers made them.
A finished clip is first *staged* as its own FLAC file under ``data/raw/.staging``; a
shard is *sealed* (written atomically, its staged files then removed) once every row of it
is settled. A run killed at any point keeps every sealed shard and every staged clip.

Imports neither torch nor the params module, because download workers load it.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from pipeline.files import atomic_path, remove_partials
from pipeline.sources.manifest import mark_ok

CLIPS_SUBDIR = "clips"  # beside the manifest; every ok row's path is a shard in it
STAGING_SUBDIR = ".staging"  # beside clips/; finished clips of shards not yet sealed
CLIPS_PER_ROW_GROUP = 8  # a reader decodes one row group (~2 MB) to get one clip
SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("flac", pa.binary(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
])


def shard_path(position: int, shard_clips: int) -> str:
    """The shard, relative to the manifest's folder, of the manifest's row ``position``."""
    return f"{CLIPS_SUBDIR}/part-{position // shard_clips:05d}.parquet"


def assign_shards(rows: list[dict], shard_clips: int) -> None:
    """Give every row that holds or may still get a clip the shard of its position."""
    for position, row in enumerate(rows):
        if row["status"] != "failed":
            row["path"] = shard_path(position, shard_clips)


def staged_path(raw_dir: Path, clip_id: str) -> Path:
    return Path(raw_dir) / STAGING_SUBDIR / f"{clip_id}.flac"


def write_shard(path: Path, clips: Iterable[tuple[str, bytes]]) -> None:
    """``(id, flac bytes)`` pairs into a shard, a row group at a time: memory holds one group."""
    with atomic_path(path) as tmp:
        # FLAC is compressed already: a Parquet codec on top would spend CPU for nothing
        with pq.ParquetWriter(tmp, SCHEMA, compression="none") as writer:
            clips = iter(clips)
            while group := list(islice(clips, CLIPS_PER_ROW_GROUP)):
                ids, flacs = zip(*group)
                digests = [hashlib.sha256(flac).hexdigest() for flac in flacs]
                writer.write_table(pa.Table.from_pydict(
                    {"id": list(ids), "flac": list(flacs), "sha256": digests}, schema=SCHEMA))


def shard_digests(path: Path) -> dict[str, str]:
    """``{clip id: sha256}`` of a shard's clips, from its small columns only."""
    table = pq.read_table(path, columns=["id", "sha256"])
    return dict(zip(table["id"].to_pylist(), table["sha256"].to_pylist()))


def _intact_digests(path: Path) -> dict[str, str]:
    """:func:`shard_digests`, or nothing for a missing or unreadable file (one a killed copy
    or a damaged disk left), which sealing then writes again."""
    try:
        return shard_digests(path)
    except (OSError, pa.ArrowException):
        return {}


def held_clips(raw_dir: Path) -> dict[str, str]:
    """``{clip id: shard}`` over every readable shard on disk."""
    held = {}
    for path in sorted((Path(raw_dir) / CLIPS_SUBDIR).glob("part-*.parquet")):
        for clip_id in _intact_digests(path):
            held[clip_id] = f"{CLIPS_SUBDIR}/{path.name}"
    return held


class Sealer:
    """Seals the shards of ``rows`` as their rows settle.

    Made once per run: it reads once which shard holds which clip, and first stages every
    clip held by another shard than its own (``source.shard_clips`` changed) so that
    rewriting one shard never loses a clip another still needs. ``keep_unlisted`` stages
    the clips of ids no row names too (a download each: a wider selection adopts them).
    """

    def __init__(self, rows: list[dict], raw_dir: Path, keep_unlisted: bool = False):
        self.raw_dir, self.keep_unlisted = Path(raw_dir), keep_unlisted
        (self.raw_dir / CLIPS_SUBDIR).mkdir(parents=True, exist_ok=True)
        remove_partials(self.raw_dir / CLIPS_SUBDIR)
        self.rows, self.by_shard = rows, {}
        for row in rows:
            if row["path"]:
                self.by_shard.setdefault(row["path"], []).append(row)
        held, store = held_clips(self.raw_dir), ClipStore(self.raw_dir)
        self.held: dict[str, list[str]] = {}  # shard -> its clip ids in order, as this run found it
        for clip_id, shard in held.items():
            self.held.setdefault(shard, []).append(clip_id)
        own = {row["id"]: row["path"] for row in rows if row["status"] == "ok"}
        unlisted = set(held) - {row["id"] for row in rows} if keep_unlisted else set()
        for clip_id, shard in held.items():
            if own.get(clip_id, shard) != shard or clip_id in unlisted:
                staged = staged_path(self.raw_dir, clip_id)
                if not staged.exists():
                    with atomic_path(staged) as tmp:
                        tmp.write_bytes(store.flac(shard, clip_id))
        self.sealed: set[str] = set()

    def seal(self, shards: Iterable[str] | None = None) -> list[str]:
        """Write each of ``shards`` (all by default) whose rows are all settled (not
        ``pending``) and whose file does not hold exactly its ok rows' clips."""
        written = []
        for shard in self.by_shard if shards is None else set(shards):
            members = self.by_shard.get(shard, [])
            if shard in self.sealed or any(r["status"] == "pending" for r in members):
                continue
            self.sealed.add(shard)
            ok = [r["id"] for r in members if r["status"] == "ok"]
            staged = {key: staged_path(self.raw_dir, key) for key in ok}
            staged = {key: file for key, file in staged.items() if file.exists()}
            path = self.raw_dir / shard
            if not staged and self.held.get(shard, []) == ok and path.exists():
                continue
            old = ClipStore(self.raw_dir)  # the earlier file, read while the new one is written beside it
            write_shard(path, ((key, staged[key].read_bytes() if key in staged else old.flac(shard, key))
                               for key in ok))
            for file in staged.values():
                file.unlink()
            written.append(shard)
        return written

    def finish(self) -> None:
        """Seal what is settled; remove the shards no row names and the staged files that
        no pending row (nor, with ``keep_unlisted``, an unlisted id) needs."""
        self.seal()
        for stray in (self.raw_dir / CLIPS_SUBDIR).iterdir():
            if f"{CLIPS_SUBDIR}/{stray.name}" not in self.by_shard:
                stray.unlink()
        keep = {staged_path(self.raw_dir, r["id"]) for r in self.rows if r["status"] == "pending"}
        if self.keep_unlisted:
            listed = {staged_path(self.raw_dir, r["id"]) for r in self.rows}
            keep |= {path for path in (self.raw_dir / STAGING_SUBDIR).glob("*.flac") if path not in listed}
        for stray in (self.raw_dir / STAGING_SUBDIR).glob("*"):
            if stray not in keep:
                stray.unlink()


def stage_clip(raw_dir: Path, row: dict, flac: bytes, updated_at=None) -> None:
    """A finished clip's bytes, staged atomically, and its row marked ok."""
    with atomic_path(staged_path(raw_dir, row["id"])) as tmp:
        tmp.write_bytes(flac)
    mark_ok(row, flac, updated_at)


class ClipMissing(KeyError):
    """The shard, or the clip in it, is not there."""


class ClipStore:
    """Random access to clips by (shard, id), holding a few row groups in memory at most."""

    def __init__(self, raw_dir: Path, cached_groups: int = 4):
        self.raw_dir = Path(raw_dir)
        self.cached_groups = cached_groups
        self._where: dict[str, dict[str, tuple[int, int]]] = {}  # shard -> id -> (group, row)
        self._digests: dict[str, dict[str, str]] = {}
        self._groups: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()

    def _index(self, shard: str) -> dict[str, tuple[int, int]]:
        if shard not in self._where:
            path = self.raw_dir / shard
            if not path.is_file():
                raise ClipMissing(f"{path} does not exist")
            digests = shard_digests(path)
            ids, metadata = list(digests), pq.read_metadata(path)
            where = {}
            for group in range(metadata.num_row_groups):
                for row in range(metadata.row_group(group).num_rows):
                    where[ids[len(where)]] = (group, row)
            self._where[shard], self._digests[shard] = where, digests
        return self._where[shard]

    def sha256(self, shard: str, clip_id: str) -> str | None:
        """The recorded digest of a clip's bytes; None when it is not there."""
        try:
            self._index(shard)
        except ClipMissing:
            return None
        return self._digests[shard].get(clip_id)

    def flac(self, shard: str, clip_id: str) -> bytes:
        where = self._index(shard)
        if clip_id not in where:
            raise ClipMissing(f"{clip_id} is not in {self.raw_dir / shard}")
        group, row = where[clip_id]
        key = (shard, group)
        if key not in self._groups:
            table = pq.ParquetFile(self.raw_dir / shard).read_row_group(group, columns=["flac"])
            self._groups[key] = table["flac"].to_pylist()
            if len(self._groups) > self.cached_groups:
                self._groups.popitem(last=False)
        self._groups.move_to_end(key)
        return self._groups[key][row]

    def audio(self, shard: str, clip_id: str):
        """``(frames, channels)`` float32 and the sample rate, as ``soundfile.read`` gives them;
        bytes that no longer match their recorded digest raise ValueError."""
        flac = self.flac(shard, clip_id)
        if hashlib.sha256(flac).hexdigest() != self._digests[shard][clip_id]:
            raise ValueError("damaged: its bytes differ from the digest recorded beside them")
        return sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)
