"""Manifest <-> JSON. Pure.

The layout is meant to be read by people too: the header fields are
pretty-printed and the snapshot index has one file per line, so
``less manifest.json`` or ``grep settings.py manifest.json`` just work.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from erp_backup.core.errors import IntegrityError
from erp_backup.core.index_table import IndexTable
from erp_backup.core.models import (
    SCHEMA_VERSION,
    Artifact,
    BackupId,
    BackupKind,
    BackupStats,
    DatabaseInfo,
    EntryType,
    FileEntry,
    Manifest,
    shared_int,
)

FORMAT = "erp-backup-set"
FILES_MARKER = '  "files": ['


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")


def parse_ts(text: str) -> datetime:
    """An ISO 8601 time with a UTC offset (``Z`` or ``±hh:mm``), fractional seconds optional: this tool
    writes ``…:SS.ffffffZ``; one written by hand or another tool may leave the fraction out."""
    if not isinstance(text, str) or not _TS.fullmatch(text):
        raise ValueError(f"time {text!r} is not like 2026-11-28T02:00:00Z")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def entry_to_dict(e: FileEntry) -> dict[str, Any]:
    d: dict[str, Any] = {"path": e.path, "type": e.type.value, "mode": f"{e.mode:04o}", "mtime_ns": e.mtime_ns}
    if e.type is EntryType.FILE:
        d.update(size=e.size, sha256=e.sha256, holder=e.holder)
    if e.type is EntryType.SYMLINK:
        d["target"] = e.target
    d.update(uid=e.uid, gid=e.gid, ino=e.ino)
    return d


_TYPES = {t.value: t for t in EntryType}
_NS_LIMIT = 1 << 63  # what os.utime(ns=…) takes: a crafted index must not end a restore in an OverflowError
_ID_LIMIT = (1 << 32) - 1  # uid/gid: (uid_t)-1 means "leave unchanged" to chown


def _bounded(value: object, low: int, high: int, what: str) -> int:
    """``int(value)``, refused (ValueError) outside ``low <= n < high``."""
    n = int(value)  # type: ignore[call-overload]
    if not low <= n < high:
        raise ValueError(f"{what} {n} is out of range")
    return n


def entry_from_dict(d: dict[str, Any]) -> FileEntry:
    typ = _TYPES.get(d["type"]) if isinstance(d["type"], str) else None
    return FileEntry(
        path=d["path"],
        type=typ if typ is not None else EntryType(d["type"]),
        mode=shared_int(_bounded(int(d["mode"], 8), 0, 0o10000, "mode")),
        mtime_ns=_bounded(d["mtime_ns"], -_NS_LIMIT + 1, _NS_LIMIT, "mtime_ns"),
        size=_bounded(d.get("size", 0), 0, _NS_LIMIT, "size"),
        uid=shared_int(_bounded(d.get("uid", 0), 0, _ID_LIMIT, "uid")),
        gid=shared_int(_bounded(d.get("gid", 0), 0, _ID_LIMIT, "gid")),
        ino=int(d.get("ino", 0)),
        sha256=d.get("sha256"),
        holder=sys.intern(d["holder"]) if d.get("holder") else None,
        target=d.get("target"),
    )


def _header(m: Manifest) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema": m.schema,
        "id": m.id.value,
        "kind": m.kind.value,
        "tags": list(m.tags),
        "parent": m.parent.value if m.parent else None,
        "base": m.base.value if m.base else None,
        "depends_on": [d.value for d in m.depends_on],
        "started_at": _ts(m.started_at),
        "finished_at": _ts(m.finished_at),
        "host": m.host,
        "tool_version": m.tool_version,
        "source_root": m.source_root,
        "stats": {
            "files_scanned": m.stats.files_scanned,
            "files_changed": m.stats.files_changed,
            "files_deleted": m.stats.files_deleted,
            "bytes_in": m.stats.bytes_in,
            "bytes_out": m.stats.bytes_out,
            "duration_s": round(m.stats.duration_s, 3),
        },
        "database": None
        if m.database is None
        else {
            "engine": m.database.engine,
            "database": m.database.database,
            "server_version": m.database.server_version,
            "dump_tool": m.database.dump_tool,
            "dump_format": m.database.dump_format,
            "raw_size": m.database.raw_size,
            "tables": dict(sorted(m.database.tables.items())),
        },
        "artifacts": [
            {
                "name": a.name,
                "role": a.role,
                "size": a.size,
                "sha256": a.sha256,
                "compression": a.compression,
                "encryption": a.encryption,
            }
            for a in m.artifacts
        ],
        "deleted": list(m.deleted),
        "skipped": [{"path": p, "reason": r} for p, r in m.skipped],
        **({"encryption": {"method": "gpg", "recipients": list(m.recipients)}} if m.recipients else {}),
    }


def _jstr(text: str) -> str:
    """A JSON string. File names that are not valid UTF-8 (decoded by the OS layer with
    surrogateescape) are written with ASCII escapes, so the manifest stays valid UTF-8
    and reads back to the very same name."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'  # nothing to escape (most names): what json.dumps would write
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(text, ensure_ascii=True)
    return json.dumps(text, ensure_ascii=False)


def entry_line(e: FileEntry) -> str:
    """One snapshot-index entry as one JSON line (same fields as ``entry_to_dict``, built directly: an
    index has tens of thousands of entries and this runs on every backup)."""
    if e.type is EntryType.FILE:
        sha = f'"{e.sha256}"' if e.sha256 else "null"
        holder = f'"{e.holder}"' if e.holder else "null"
        return _line_head(e) + f',"sha256":{sha},"holder":{holder}' + _line_tail(e)
    return _line_head(e) + _line_tail(e)


def _line_head(e: FileEntry) -> str:
    head = f'{{"path":{_jstr(e.path)},"type":"{e.type.value}","mode":"{e.mode:04o}","mtime_ns":{e.mtime_ns}'
    if e.type is EntryType.FILE:
        return head + f',"size":{e.size}'
    if e.type is EntryType.SYMLINK:
        return head + f',"target":{_jstr(e.target) if e.target is not None else "null"}'
    return head


def _line_tail(e: FileEntry) -> str:
    return f',"uid":{e.uid},"gid":{e.gid},"ino":{e.ino}}}'


def dump_lines(m: Manifest) -> Iterator[str]:
    """The manifest text piece by piece (a writer streams it: no whole copy in memory)."""
    return dump_with_index(m, (entry_line(e) for e in m.files))


def dump_with_index(m: Manifest, index: Iterable[str]) -> Iterator[str]:
    """The manifest text of ``m``'s header with ``index`` (``entry_line`` texts, sorted by path) as
    its snapshot index, whatever ``m.files`` holds: the index streams from wherever it is (a
    backup writes it from a file), byte for byte what ``dump_lines`` writes for the same entries."""
    head = json.dumps(_header(m), indent=2, ensure_ascii=True)
    it = iter(index)
    batch = list(islice(it, _BATCH))
    if not batch:
        yield head[:-2] + ',\n  "files": []\n}\n'
        return
    yield head[:-2] + ",\n" + FILES_MARKER + "\n"
    while batch:  # a few thousand lines a piece: fewer, larger writes
        nxt = list(islice(it, _BATCH))
        yield "    " + ",\n    ".join(batch) + (",\n" if nxt else "\n")
        batch = nxt
    yield "  ]\n}\n"


def dumps(m: Manifest) -> str:
    return "".join(dump_lines(m))


def header_text(head: str) -> str:
    """Turn the text before the snapshot index into a parseable manifest without files.

    ``head`` is everything up to (not including) the FILES_MARKER line."""
    return head.rstrip().rstrip(",") + ',\n  "files": []\n}\n'


def loads(text: str | bytes, *, where: str = "manifest.json") -> Manifest:
    try:
        d = json.loads(text)
    except ValueError as e:
        raise IntegrityError(f"{where} is not valid JSON ({e})",
                             hint="the set is damaged: verify it and restore from another set") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise IntegrityError(f"{where} is not an erp-backup manifest", hint="check the backup directory")
    schema = d.get("schema")
    if schema != SCHEMA_VERSION:
        raise IntegrityError(
            f"{where} has schema version {schema}; this erp-backup reads version {SCHEMA_VERSION}",
            hint="use the erp-backup release that wrote it, or restore by hand (README: manual restore)",
        )
    try:
        db = d.get("database")
        st = d.get("stats") or {}
        return Manifest(
            id=BackupId(d["id"]),
            kind=BackupKind(d["kind"]),
            tags=tuple(d.get("tags", ())),
            parent=BackupId(d["parent"]) if d.get("parent") else None,
            base=BackupId(d["base"]) if d.get("base") else None,
            started_at=parse_ts(d["started_at"]),
            finished_at=parse_ts(d["finished_at"]),
            host=d.get("host", ""),
            tool_version=d.get("tool_version", ""),
            source_root=d.get("source_root", ""),
            stats=BackupStats(
                files_scanned=int(st.get("files_scanned", 0)),
                files_changed=int(st.get("files_changed", 0)),
                files_deleted=int(st.get("files_deleted", 0)),
                bytes_in=int(st.get("bytes_in", 0)),
                bytes_out=int(st.get("bytes_out", 0)),
                duration_s=float(st.get("duration_s", 0.0)),
            ),
            database=None
            if db is None
            else DatabaseInfo(
                engine=db["engine"],
                database=db["database"],
                server_version=db["server_version"],
                dump_tool=db["dump_tool"],
                dump_format=db["dump_format"],
                raw_size=int(db.get("raw_size", 0)),
                tables=_tables(db.get("tables", {})),
            ),
            artifacts=tuple(
                Artifact(
                    name=a["name"],
                    role=a["role"],
                    size=int(a["size"]),
                    sha256=a["sha256"],
                    compression=a.get("compression", "zstd"),
                    encryption=a.get("encryption"),
                )
                for a in d.get("artifacts", [])
            ),
            files=tuple(entry_from_dict(e) for e in d.get("files", [])),
            deleted=tuple(d.get("deleted", [])),
            depends_on=tuple(BackupId(x) for x in d.get("depends_on", [])),
            skipped=tuple((s["path"], s["reason"]) for s in d.get("skipped", [])),
            recipients=_recipients(d.get("encryption")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise IntegrityError(f"{where} is incomplete or malformed ({e!r})",
                             hint="the set is damaged: verify it and restore from another set") from e


def _tables(tables: object) -> dict[str, int]:
    if not isinstance(tables, dict):
        raise ValueError("database.tables: not an object of table names and row counts")
    return {str(k): _bounded(v, 0, _NS_LIMIT, f"row count of {k}") for k, v in tables.items()}


def _recipients(enc: object) -> tuple[str, ...]:
    if enc is None:
        return ()
    if not isinstance(enc, dict) or not isinstance(enc.get("recipients", []), list):
        raise ValueError("encryption: not an object with a list of recipients")
    return tuple(str(r) for r in enc.get("recipients", []))


def load_lines(lines: Iterable[str], *, where: str = "manifest.json") -> Manifest:
    """Parse a manifest as this tool writes it (one index entry per line), one line at a time:
    the decoded JSON of the whole index never exists at once, so memory follows the entries only.
    Raises IntegrityError on anything unexpected; callers may then fall back to ``loads``."""
    it = iter(lines)
    head, marker = _head(it)
    if marker is None:
        return loads("".join(head), where=where)
    header = loads(header_text("".join(head)), where=where)
    files = IndexTable()  # packed: a third of the memory of a tuple of entries
    batch: list[str] = []
    for text in _index_texts(it, marker, where):
        batch.append(text)
        if len(batch) >= _BATCH:
            for e in _entries(batch, where):
                files.append(e)
            batch = []
    for e in _entries(batch, where):
        files.append(e)
    return dataclasses.replace(header, files=files)


def iter_entries(lines: Iterable[str], *, where: str = "manifest.json") -> Iterator[FileEntry]:
    """The snapshot index of a manifest as this tool writes it, entry by entry (decoded a few
    thousand lines at a time): nothing but the current batch is held. IntegrityError on another
    layout or a malformed line."""
    it = iter(lines)
    head, marker = _head(it)
    if marker is None:
        raise IntegrityError(f"{where}: no index line marker", hint="read it whole (manifest.loads)")
    batch: list[str] = []
    for text in _index_texts(it, marker, where):
        batch.append(text)
        if len(batch) >= _BATCH:
            yield from _entries(batch, where)
            batch = []
    yield from _entries(batch, where)


def _head(it: Iterator[str]) -> tuple[list[str], str | None]:
    head: list[str] = []
    for line in it:
        if line.startswith(FILES_MARKER):
            return head, line
        head.append(line)
    return head, None


def _index_texts(it: Iterator[str], marker: str, where: str) -> Iterator[str]:
    """The entry texts (one JSON object each, without the indent and the comma) after ``marker``;
    IntegrityError on anything else, on entries after the end, on a truncated index."""
    if marker.strip() == '"files": []':
        return
    closed = False
    for line in it:
        text = line.strip()
        if text.startswith("{"):
            if closed:
                raise IntegrityError(f"{where}: entries after the end of the index", hint="the set is damaged")
            yield text.rstrip(",")
        elif text in ("]", "}", ""):
            closed = True
        else:
            raise IntegrityError(f"{where}: unexpected line in the index", hint="the set is damaged")
    if not closed:
        raise IntegrityError(f"{where}: the index is truncated", hint="the set is damaged")


def open_index(lines: Iterable[str], *, where: str = "manifest.json") -> tuple[Manifest, Iterator[str]]:
    """(header, the index entry texts in file order) of a manifest as this tool writes it: for a
    merge against the index without decoding it (``line_path``, ``carry_line``). IntegrityError
    (now, or while iterating) on another layout: callers then fall back to ``load_lines``/``loads``."""
    it = iter(lines)
    head, marker = _head(it)
    if marker is None:
        raise IntegrityError(f"{where}: no index line marker", hint="read it whole (manifest.loads)")
    return loads(header_text("".join(head)), where=where), _index_texts(it, marker, where)


_PATH_END = '","type":"'


def line_path(text: str) -> str:
    """The path of an index line as ``entry_line`` writes it (IntegrityError for any other line).
    Inside a JSON string every ``"`` is escaped, so the first ``","type":"`` ends the path."""
    end = text.find(_PATH_END, 9) if text.startswith('{"path":"') else -1
    if end < 0:
        raise IntegrityError("index line not in this tool's layout", hint="read the index whole")
    raw = text[9:end]
    if "\\" not in raw:
        return raw
    try:
        path = json.loads('"' + raw + '"')
    except ValueError as e:
        raise IntegrityError(f"index line with a malformed path ({e})", hint="the set is damaged") from e
    return path


_LABELS = "full|monthly|incr|diff"  # models._LABEL_KIND
_CARRY_MID = re.compile(r',"sha256":(?:"[0-9a-f]{64}"|null),"holder":"([0-9]{8}T[0-9]{6}Z-(?:' + _LABELS + r'))"')


def carry_line(current: FileEntry, text: str) -> tuple[str, str | None, str] | None:
    """``changes.same_stat_carry`` on the text of the reference's index line: (the line to carry,
    the set holding the file's bytes, the path) when ``text`` is exactly the line of ``current``'s stat data
    with a sha256 and a holder (a file) or nothing more (a directory, a link), else None (archive
    ``current`` again). The carried line is then exactly what ``entry_line`` writes for the
    carried entry; a reference with a malformed sha256 or holder is not carried, but archived
    again rather than copied into the new index."""
    if current.type is not EntryType.FILE:
        return (text, None, current.path) if text == entry_line(current) else None
    e = current  # the file case inlines ``_line_head``/``_line_tail``: it runs once per unchanged file
    head = (f'{{"path":{_jstr(e.path)},"type":"file","mode":"{e.mode:04o}","mtime_ns":{e.mtime_ns}'
            f',"size":{e.size}')
    tail = f',"uid":{e.uid},"gid":{e.gid},"ino":{e.ino}}}'
    if not (text.startswith(head) and text.endswith(tail)):
        return None
    m = _CARRY_MID.fullmatch(text, len(head), len(text) - len(tail))
    return (text, m.group(1), e.path) if m else None


_BATCH = 2048  # index lines decoded per json.loads call (one C-level parse instead of one per line)


def _entries(lines: list[str], where: str) -> list[FileEntry]:
    """The entries of ``lines`` (one JSON object each), decoded in one ``json.loads`` call."""
    if not lines:
        return []
    try:
        decoded = json.loads("[" + ",".join(lines) + "]")
        if len(decoded) != len(lines) or not all(isinstance(d, dict) for d in decoded):
            raise ValueError("not one object per line")
        return [entry_from_dict(d) for d in decoded]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise IntegrityError(f"{where}: malformed index line ({e})", hint="the set is damaged") from e


def sha256sums(artifacts: tuple[Artifact, ...] | list[Artifact]) -> str:
    """The ``SHA256SUMS`` text, ``sha256sum -c`` compatible (two spaces, text mode)."""
    return "".join(f"{a.sha256}  {a.name}\n" for a in sorted(artifacts, key=lambda a: a.name))


def parse_sha256sums(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep:
            digest, sep, name = line.partition(" *")
        if not sep or len(digest) != 64:
            raise IntegrityError(f"SHA256SUMS line {n} is malformed", hint="the set is damaged")
        out[name] = digest.lower()
    return out
