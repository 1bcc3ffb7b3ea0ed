"""File-drop adapter: a directory that local systems drop CSV and JSON Lines files into.

Rules of this module:
- Formats: ``*.csv`` (a header row with a ``kind`` column; other columns are payload fields; list
  fields as ``a;b`` or a JSON array) and ``*.jsonl`` / ``*.json`` (one object per line, either
  ``{"kind": K, "payload": {...}}`` or flat with a ``kind`` field). One record per physical line.
- Encoding is decided per file: UTF-8 (with or without BOM) unless most non-ASCII lines fail to decode
  as UTF-8, then GB18030. A line that does not decode in the file's encoding goes to quarantine
  ("wrong encoding"); so do unparsable, truncated and over-long lines — the rest of the file goes on.
- Only complete files are read: with ``marker = true`` a file is complete when ``<file>.done`` exists;
  otherwise (default) when its size and mtime have not changed for ``settle_seconds`` (default 2).
  Names starting with ``.`` or ending in ``.tmp``/``.part``/``.done`` are never read, so writers that
  write ``x.csv.tmp`` and rename, or write a marker, are always safe; a writer that pauses longer than
  ``settle_seconds`` mid-file should use one of those.
- The cursor is ``{file, size, mtime_ns, offset, line, encoding, header, finished}``: the byte offset
  after the last committed line. A restart continues the same file at that offset. The batch that
  reaches the end of a file commits ``finished``; ``after_commit`` then moves the file (and its
  marker) into ``archive/YYYYMMDD/`` — idempotent, repeated after a crash by the next poll.

Config ``[adapters.<name>]``: type = "filedrop", dir, archive (default <dir>/archive), marker,
settle_seconds, batch (default 5000), interval (default 1).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.base import AdapterError, Batch, SourceRow
from node.errors import ConfigError

MAX_LINE = 1 << 20  # a line longer than 1 MiB is not a record; it goes to quarantine uncut up to MAX_RAW
LIST_FIELDS = frozenset({"materials", "evidence", "suppliers", "documents"})
JSON_FIELDS = frozenset({"steps", "discretion", "risk_points"})
SKIP_SUFFIXES = (".tmp", ".part", ".done", ".swp")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


# ---- parsing (pure: bytes in, SourceRows out) -------------------------------------------------------------


def sniff_encoding(lines: Iterable[bytes]) -> str:
    ok = bad = 0
    for raw in lines:
        if raw.isascii():
            continue
        try:
            raw.rstrip(b"\r\n").decode("utf-8")
            ok += 1
        except UnicodeDecodeError as e:
            if e.reason == "unexpected end of data":
                ok += 1  # valid UTF-8 cut inside its last character: a truncated line, not GB18030
            else:
                bad += 1
    return "utf-8" if ok >= bad else "gb18030"


def decode_line(raw: bytes, encoding: str) -> str:
    text = raw.decode(encoding)  # raises UnicodeDecodeError
    return text.lstrip("\ufeff").rstrip("\r\n")


def _cell(field: str, value: str) -> Any:
    v = value.strip()
    if field in LIST_FIELDS and not v.startswith("["):
        return [s.strip() for s in v.split(";") if s.strip()]
    if field in LIST_FIELDS or field in JSON_FIELDS:
        try:
            return json.loads(v)
        except ValueError:
            return v  # validation names the field and the rule
    return v


def parse_line(fmt: str, raw: bytes, encoding: str, header: list[str] | None, position: str) -> SourceRow:
    """One physical line → a SourceRow (with ``error`` when it cannot be read)."""
    if len(raw) > MAX_LINE:
        return SourceRow(position, "", raw=raw, error=f"line is {len(raw)} bytes, longer than the limit of {MAX_LINE} "
                         "(fix: a record is one line of at most 1 MiB; attach documents by reference)")
    if encoding != "utf-8" and not raw.isascii():
        try:
            raw.decode("utf-8")
            # GB18030 would decode it too, as mojibake that validation cannot catch: refuse it here
            return SourceRow(position, "", raw=raw, error=f"line is UTF-8 but the file is {encoding}: wrong "
                             "encoding (fix: save the whole file in one encoding, UTF-8 or GB18030)")
        except UnicodeDecodeError:
            pass
    try:
        text = decode_line(raw, encoding)
    except UnicodeDecodeError as e:
        if e.reason in ("unexpected end of data", "incomplete multibyte sequence") and e.end >= len(raw.rstrip()):
            return SourceRow(position, "", raw=raw, error="line ends inside a character: truncated line "
                             "(fix: resend the complete record)")
        return SourceRow(position, "", raw=raw, error=f"line is not valid {encoding} (byte {e.start}; the file is "
                         f"{encoding}): wrong encoding (fix: save the whole file in one encoding, UTF-8 or GB18030)")
    if fmt == "csv":
        assert header is not None
        try:
            cells = next(csv.reader([text], strict=True))
        except (csv.Error, StopIteration) as e:
            return SourceRow(position, "", raw=raw, error=f"CSV line cannot be parsed ({e}): truncated line or "
                             "unbalanced quotes (fix: one record per line, quote fields containing commas)")
        if len(cells) != len(header):
            return SourceRow(position, "", raw=raw, error=f"CSV line has {len(cells)} fields but the header has "
                             f"{len(header)}: truncated or extra fields (fix: one value per header column)")
        row = dict(zip(header, cells, strict=True))
        kind = row.pop("kind", "").strip()
        payload = {k: _cell(k, v) for k, v in row.items() if k and v.strip()}
        # a quarantined CSV row is kept as {"kind", "payload"} JSON, so `quarantine replay` reads it alone
        return SourceRow(position, kind, payload)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        return SourceRow(position, "", raw=raw, error=f"not valid JSON ({str(e)[:120]}): truncated line? "
                         "(fix: one complete JSON object per line)")
    if not isinstance(obj, dict):
        return SourceRow(position, "", raw=raw, error=f"a JSON {type(obj).__name__}, not an object "
                         "(fix: one JSON object per line)")
    kind = obj.pop("kind", "")
    if not isinstance(kind, str) or not kind:
        return SourceRow(position, "", raw=raw, error="no 'kind' field (fix: every record names its kind, "
                         "e.g. case.accept)")
    payload = obj.pop("payload") if "payload" in obj and len(obj) == 1 else obj
    return SourceRow(position, kind, payload, raw)


def format_of(path: Path, fmt: str | None = None) -> str:
    return fmt or FORMATS.get(path.suffix.lower(), "jsonl")


@dataclass
class FileCursor:
    file: str
    size: int
    mtime_ns: int
    offset: int = 0
    line: int = 0
    encoding: str = ""
    header: list[str] | None = None
    finished: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_lines(path: Path, offset: int) -> Iterator[tuple[int, bytes]]:
    """(offset after the line, line bytes) from ``offset`` on. A last line without newline counts."""
    with path.open("rb") as f:
        f.seek(offset)
        pos = offset
        for raw in f:
            pos += len(raw)
            yield pos, raw


def start_file(path: Path) -> FileCursor:
    st = path.stat()
    with path.open("rb") as f:
        head = [f.readline(MAX_LINE + 1) for _ in range(200)]
    cur = FileCursor(path.name, st.st_size, st.st_mtime_ns, encoding=sniff_encoding(head))
    return cur


def read_batch(path: Path, fmt: str, cur: FileCursor, limit: int) -> list[SourceRow]:
    """Up to ``limit`` rows after ``cur`` (which it advances; ``finished`` at the end of the file)."""
    rows: list[SourceRow] = []
    it = read_lines(path, cur.offset)
    for end, raw in it:
        cur.line += 1
        cur.offset = end
        position = f"{cur.file}:{cur.line}"
        if not raw.strip():
            continue
        if fmt == "csv" and cur.header is None:
            try:
                cur.header = [h.strip() for h in next(csv.reader([decode_line(raw, cur.encoding)]))]
            except (UnicodeDecodeError, csv.Error, StopIteration):
                cur.header = []
            if "kind" not in cur.header:
                # without a header nothing in the file can be read: quarantine the whole file's lines
                rows.append(SourceRow(position, "", raw=raw, error="the CSV header has no 'kind' column (fix: the "
                                      "first line names the columns, one of them 'kind')"))
                cur.header = None
                for end2, raw2 in it:
                    cur.line += 1
                    cur.offset = end2
                    rows.append(SourceRow(f"{cur.file}:{cur.line}", "", raw=raw2, error="no usable CSV header"))
                break
            continue
        rows.append(parse_line(fmt, raw.rstrip(b"\r\n"), cur.encoding, cur.header, position))
        if len(rows) >= limit:
            break
    else:
        cur.finished = True
    if not cur.finished and cur.offset >= path.stat().st_size:
        cur.finished = True
    return rows


# ---- the adapter (I/O shell) ---------------------------------------------------------------------------


class FileDropAdapter:
    def __init__(self, name: str, section: dict[str, Any], home_dir: Path) -> None:
        self.name = name
        d = section.get("dir")
        if not isinstance(d, str) or not d:
            raise ConfigError(f"[adapters.{name}]: dir is missing", fix="set dir = the drop directory")
        self.dir = Path(d) if os.path.isabs(d) else home_dir / d
        arch = section.get("archive")
        self.archive = Path(arch) if isinstance(arch, str) and arch else self.dir / "archive"
        if not self.archive.is_absolute():
            self.archive = home_dir / self.archive
        self.marker = bool(section.get("marker", False))
        self.settle = float(section.get("settle_seconds", 2.0))
        self.batch = int(section.get("batch", 5000))
        self.interval = float(section.get("interval", 1.0))
        self._seen: dict[str, tuple[int, int, float]] = {}  # name → (size, mtime_ns, since)

    def _complete(self, p: Path) -> bool:
        if self.marker:
            return Path(str(p) + ".done").exists()
        st = p.stat()
        ident = (st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        prev = self._seen.get(p.name)
        if prev is None or prev[:2] != ident:
            self._seen[p.name] = (*ident, now)
            return False
        return now - prev[2] >= self.settle

    def candidates(self) -> list[Path]:
        if not self.dir.is_dir():
            raise AdapterError(f"{self.name}: drop directory {self.dir} does not exist",
                               fix="create it, or fix dir = in node.toml")
        out = []
        for p in self.dir.iterdir():
            n = p.name
            if not p.is_file() or n.startswith(".") or n.endswith(SKIP_SUFFIXES) or p.suffix.lower() not in FORMATS:
                continue
            out.append(p)
        return sorted(out, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def poll(self, cursor: Any) -> Batch | None:
        cur = FileCursor(**cursor) if cursor else None
        if cur is not None and cur.finished:
            # committed but maybe not archived (crash in between): archive, then clear the cursor
            self._archive(cur)
            return Batch([], None)
        if cur is None:
            for p in self.candidates():
                try:
                    if self._complete(p):
                        cur = start_file(p)
                        break
                except FileNotFoundError:
                    continue
            if cur is None:
                return None
        path = self.dir / cur.file
        if not path.exists():
            raise AdapterError(f"{self.name}: {path} disappeared while being read (at line {cur.line})",
                               fix="put the file back, or clear the cursor: `fednode adapters reset DIR NAME`")
        rows = read_batch(path, format_of(path), cur, self.batch)
        return Batch(rows, cur.as_dict(), done=cur if cur.finished else None)

    def _archive(self, cur: FileCursor) -> None:
        path = self.dir / cur.file
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        if (st.st_size, st.st_mtime_ns) != (cur.size, cur.mtime_ns) and st.st_size < cur.offset:
            return  # a different file with the same name: leave it for its own turn
        day = time.strftime("%Y%m%d")
        dest_dir = self.archive / day
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / cur.file
        n = 1
        while dest.exists():
            dest = dest_dir / f"{cur.file}.{n}"
            n += 1
        shutil.move(str(path), str(dest))
        marker = Path(str(path) + ".done")
        if marker.exists():
            shutil.move(str(marker), str(dest) + ".done")
        self._seen.pop(cur.file, None)

    def after_commit(self, batch: Batch) -> None:
        if isinstance(batch.done, FileCursor):
            self._archive(batch.done)

    def describe(self, cursor: Any) -> str:
        if not cursor:
            return "(idle)"
        return f"{cursor['file']} line {cursor['line']}" + (" (finished)" if cursor.get("finished") else "")

    def close(self) -> None:
        pass
