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
- Nothing inside the drop directory is followed out of it (whoever writes the directory may be
  hostile). The directory is opened once per poll and everything else is relative to that
  descriptor: entries are listed with ``lstat``, a file is opened with ``O_NOFOLLOW`` and checked on
  the open descriptor (a regular file with one link), the archive directory and its day directories
  are created and opened component by component with ``O_NOFOLLOW``, and files are moved with
  ``rename`` between directory descriptors (a link is moved as the link). An entry that is a
  symbolic link, a hard link (more than one name) or not a regular file is never read: it is
  quarantined as one row naming it and the fix (no byte of it is kept) and moved, unread, into the
  archive. An archive directory (or day directory) that is a link stops the adapter with an error
  naming it; nothing is created or moved through it. The drop directory itself, and an ``archive``
  configured outside it, are the operator's own paths and are opened as configured.
- Reads are bounded: a line is read up to ``MAX_LINE`` bytes; a longer one is quarantined ("line
  longer than the limit ...") with its first ``MAX_RAW`` bytes only, and the rest of it is skipped
  chunk by chunk up to its newline, never held. A batch ends after ``BATCH_BYTES`` of input, so a
  batch of 5000 near-limit lines does not hold gigabytes.

Config ``[adapters.<name>]``: type = "filedrop", dir, archive (default <dir>/archive), marker,
settle_seconds, batch (default 5000), interval (default 1).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from adapters.base import MAX_RAW, AdapterError, Batch, SourceRow
from node.core.errors import ConfigError

MAX_LINE = 1 << 20  # a line longer than 1 MiB is not a record: quarantined with its first MAX_RAW bytes only
SKIP_CHUNK = 1 << 20  # an over-long line is skipped this much at a time
SNIFF_BYTES = 4 << 20  # the encoding is decided from the first 200 lines within this much of the file
BATCH_BYTES = 32 << 20  # a batch ends after this much input (and at ``batch`` rows)
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
        return too_long(position, raw[:MAX_RAW], len(raw))
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


def too_long(position: str, head: bytes, length: int) -> SourceRow:
    """The quarantine row of a line over ``MAX_LINE``: only ``head`` (its first bytes) is kept."""
    return SourceRow(position, "", raw=head, error=f"line longer than the limit of {MAX_LINE} bytes (it is {length} "
                     f"bytes; not read: only its first {len(head)} bytes are kept here) (fix: a record is one line "
                     "of at most 1 MiB; attach documents by reference)")


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


def read_lines(f: IO[bytes], offset: int) -> Iterator[tuple[int, bytes, int]]:
    """(offset after the line, line bytes, length) from ``offset`` on. A last line without newline
    counts. A line over ``MAX_LINE`` comes as its first ``MAX_RAW`` bytes with its whole length without
    the newline (so ``length > len(bytes)``); the rest of it is read and dropped a chunk at a time: memory stays bounded
    whatever the file holds."""
    f.seek(offset)
    pos = offset
    while raw := f.readline(MAX_LINE + 1):
        n = len(raw)
        if n > MAX_LINE and not raw.endswith(b"\n"):
            head = raw[:MAX_RAW]
            del raw
            newline = 0
            while chunk := f.readline(SKIP_CHUNK):
                n += len(chunk)
                if chunk.endswith(b"\n"):
                    newline = 1
                    break
            pos += n
            yield pos, head, n - newline
            continue
        pos += n
        yield pos, raw, n


def sniff_file(f: IO[bytes]) -> str:
    """The encoding of a file, from its first 200 lines within its first ``SNIFF_BYTES``."""
    f.seek(0)
    return sniff_encoding(f.read(SNIFF_BYTES).split(b"\n")[:200])


def start_file(f: IO[bytes], name: str) -> FileCursor:
    st = os.fstat(f.fileno())
    return FileCursor(name, st.st_size, st.st_mtime_ns, encoding=sniff_file(f))


def read_batch(f: IO[bytes], fmt: str, cur: FileCursor, limit: int) -> list[SourceRow]:
    """Up to ``limit`` rows (and about ``BATCH_BYTES`` of input) after ``cur``, which it advances
    (``finished`` at the end of the file)."""
    rows: list[SourceRow] = []
    it = read_lines(f, cur.offset)
    began = cur.offset
    for end, raw, n in it:
        cur.line += 1
        cur.offset = end
        position = f"{cur.file}:{cur.line}"
        if fmt == "csv" and cur.header is not None and "kind" not in cur.header:
            # no usable header (the cursor keeps it as []): nothing in the file can be read
            rows.append(SourceRow(position, "", raw=raw, error="no usable CSV header"))
        elif n > len(raw):  # over MAX_LINE: only its head was kept
            if fmt == "csv" and cur.header is None:
                cur.header = []
                rows.append(SourceRow(position, "", raw=raw, error=f"the CSV header line is longer than the limit of "
                                      f"{MAX_LINE} bytes (fix: the first line names the columns, one of them 'kind')"))
            else:
                rows.append(too_long(position, raw, n))
        elif not raw.strip():
            continue
        elif fmt == "csv" and cur.header is None:
            try:
                cur.header = [h.strip() for h in next(csv.reader([decode_line(raw, cur.encoding)]))]
            except (UnicodeDecodeError, csv.Error, StopIteration):
                cur.header = []
            if "kind" not in cur.header:
                cur.header = []  # without a header nothing in the file can be read: quarantine its lines
                rows.append(SourceRow(position, "", raw=raw, error="the CSV header has no 'kind' column (fix: the "
                                      "first line names the columns, one of them 'kind')"))
            else:
                continue
        else:
            rows.append(parse_line(fmt, raw.rstrip(b"\r\n"), cur.encoding, cur.header, position))
        if len(rows) >= limit or cur.offset - began >= BATCH_BYTES:
            break
    else:
        cur.finished = True
    if not cur.finished and cur.offset >= os.fstat(f.fileno()).st_size:
        cur.finished = True
    return rows


# ---- the adapter (I/O shell) ---------------------------------------------------------------------------


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_NOFOLLOW = _DIR | os.O_NOFOLLOW
# O_NONBLOCK: a FIFO put in the drop directory opens at once (and is then refused) instead of blocking
_FILE_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Refused(Exception):
    """A drop-directory entry that is not read (a link, not a regular file): ``reason`` says why and the fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _kind_of(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "named pipe"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return what
    return "special file"


def refusal(dir_fd: int, name: str, st: os.stat_result) -> str:
    """Why the entry ``name`` (``st`` from lstat or fstat) is not read, with the fix."""
    unread = "not read (no byte of it is kept) and moved unread to the archive"
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return (f"{name} is a symbolic link (to {target[:200]!r}): the node never follows links in the drop directory; "
                f"{unread} (fix: drop the file itself, written or copied into the directory, not a link to it)")
    if not stat.S_ISREG(st.st_mode):
        return f"{name} is a {_kind_of(st.st_mode)}, not a regular file; {unread} (fix: drop regular files only)"
    return (f"{name} has {st.st_nlink} hard links: it may be another file of this machine under a second name; "
            f"{unread} (fix: drop a copy of the file (cp), not a hard link to it (ln))")


def open_entry(dir_fd: int, name: str) -> IO[bytes]:
    """Open the drop-directory entry ``name`` for reading, never through a link: the checks are made on
    the open descriptor, so nothing can be swapped in between. Raises Refused, or FileNotFoundError."""
    try:
        fd = os.open(name, _FILE_NOFOLLOW, dir_fd=dir_fd)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise Refused(refusal(dir_fd, name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False))) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise Refused(refusal(dir_fd, name, st))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


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
        # an archive inside the drop directory is reached from it, one component at a time, never via a link
        self._archive_parts: tuple[str, ...] | None = None
        for base in (os.path.normpath(self.dir), os.path.realpath(self.dir)):
            parts = Path(os.path.relpath(os.path.normpath(self.archive), base)).parts
            if not parts or parts[0] != "..":
                self._archive_parts = tuple(x for x in parts if x != ".")
                break
        self.marker = bool(section.get("marker", False))
        self.settle = float(section.get("settle_seconds", 2.0))
        self.batch = int(section.get("batch", 5000))
        self.interval = float(section.get("interval", 1.0))
        self._seen: dict[str, tuple[int, int, float]] = {}  # name → (size, mtime_ns, since)

    @contextlib.contextmanager
    def _drop_dir(self) -> Iterator[int]:
        """The drop directory's descriptor: everything inside it is reached relative to this one."""
        try:
            fd = os.open(self.dir, _DIR)
        except (FileNotFoundError, NotADirectoryError):
            raise AdapterError(f"{self.name}: drop directory {self.dir} does not exist",
                               fix="create it, or fix dir = in node.toml") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _complete(self, dir_fd: int, name: str, st: os.stat_result) -> bool:
        if self.marker:
            return _exists(dir_fd, name + ".done")
        ident = (st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        prev = self._seen.get(name)
        if prev is None or prev[:2] != ident:
            self._seen[name] = (*ident, now)
            return False
        return now - prev[2] >= self.settle

    def candidates(self, dir_fd: int) -> list[tuple[str, os.stat_result]]:
        """The entries that hold (or claim to hold) records, by age: (name, lstat). Links are listed, not
        followed (poll refuses them); directories are not listed."""
        out = []
        with os.scandir(dir_fd) as it:
            for e in it:
                n = e.name
                if n.startswith(".") or n.endswith(SKIP_SUFFIXES) or Path(n).suffix.lower() not in FORMATS:
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    out.append((n, st))
        return sorted(out, key=lambda x: (x[1].st_mtime_ns, x[0]))

    def _refuse(self, name: str, reason: str, dir_fd: int) -> Batch:
        """One quarantine row for an entry that is not read; ``after_commit`` moves the entry (unread) away."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            size, mtime = st.st_size, st.st_mtime_ns
        except FileNotFoundError:
            size = mtime = 0
        cur = FileCursor(name, size, mtime, finished=True)
        return Batch([SourceRow(name, "", raw=b"", error=reason)], cur.as_dict(), done=cur)

    def poll(self, cursor: Any) -> Batch | None:
        cur = FileCursor(**cursor) if cursor else None
        with self._drop_dir() as dfd:
            if cur is not None and cur.finished:
                # committed but maybe not archived (crash in between): archive, then clear the cursor
                self._archive(dfd, cur)
                return Batch([], None)
            if cur is not None:
                try:
                    f = open_entry(dfd, cur.file)
                except FileNotFoundError:
                    raise AdapterError(f"{self.name}: {self.dir / cur.file} disappeared while being read (at line "
                                       f"{cur.line})", fix="put the file back, or clear the cursor: "
                                       "`fednode adapters reset DIR NAME`") from None
                except Refused as r:  # replaced by a link (or linked) mid-file: not one more byte of it
                    return self._refuse(cur.file, r.reason, dfd)
            else:
                for name, st in self.candidates(dfd):
                    if not stat.S_ISREG(st.st_mode):
                        return self._refuse(name, refusal(dfd, name, st), dfd)
                    try:
                        if not self._complete(dfd, name, st):
                            continue
                        f = open_entry(dfd, name)
                    except FileNotFoundError:
                        continue
                    except Refused as r:
                        return self._refuse(name, r.reason, dfd)
                    break
                else:
                    return None
            with f:
                if cur is None:
                    cur = start_file(f, name)
                rows = read_batch(f, format_of(Path(cur.file)), cur, self.batch)
        return Batch(rows, cur.as_dict(), done=cur if cur.finished else None)

    def _subdir(self, parent_fd: int, name: str, where: Path) -> int:
        """Open (creating it if missing) the directory ``name`` under ``parent_fd``, never through a link."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=parent_fd)  # mkdir never follows a link of that name: it finds it there
        try:
            return os.open(name, _DIR_NOFOLLOW, dir_fd=parent_fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        raise AdapterError(f"{self.name}: {where} is a symbolic link or not a directory; the node never follows a "
                           "path out of the drop directory, so finished files stay where they are",
                           fix=f"remove {where} (the node creates the directory itself), or set archive = a "
                           f"directory of your own in [adapters.{self.name}]")

    def _archive_day(self, dir_fd: int) -> int:
        """The descriptor of today's archive directory, made and reached without following a link."""
        day = time.strftime("%Y%m%d")
        if self._archive_parts is not None:
            fd, where, parts = os.dup(dir_fd), self.dir, (*self._archive_parts, day)
        else:  # the operator's own directory outside the drop directory
            self.archive.mkdir(parents=True, exist_ok=True)
            fd, where, parts = os.open(self.archive, _DIR), self.archive, (day,)
        try:
            for part in parts:
                where = where / part
                sub = self._subdir(fd, part, where)
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _archive(self, dir_fd: int, cur: FileCursor) -> None:
        try:
            st = os.stat(cur.file, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if (st.st_size, st.st_mtime_ns) != (cur.size, cur.mtime_ns) and st.st_size < cur.offset:
            return  # a different file with the same name: leave it for its own turn
        afd = self._archive_day(dir_fd)
        try:
            dest = cur.file
            n = 1
            while _exists(afd, dest):
                dest = f"{cur.file}.{n}"
                n += 1
            _move(dir_fd, cur.file, afd, dest)
            if _exists(dir_fd, cur.file + ".done"):
                _move(dir_fd, cur.file + ".done", afd, dest + ".done")
        finally:
            os.close(afd)
        self._seen.pop(cur.file, None)

    def after_commit(self, batch: Batch) -> None:
        if isinstance(batch.done, FileCursor):
            with self._drop_dir() as dfd:
                self._archive(dfd, batch.done)

    def describe(self, cursor: Any) -> str:
        if not cursor:
            return "(idle)"
        return f"{cursor['file']} line {cursor['line']}" + (" (finished)" if cursor.get("finished") else "")

    def close(self) -> None:
        pass


def _move(src_fd: int, name: str, dst_fd: int, dest: str) -> None:
    """Move the entry itself (a link as the link) between two directory descriptors; across file systems
    by copy and unlink, the copy made with O_EXCL | O_NOFOLLOW so it never writes through a link."""
    try:
        os.rename(name, dest, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src_fd), dest, dir_fd=dst_fd)
    elif stat.S_ISREG(st.st_mode):
        with os.fdopen(os.open(name, _FILE_NOFOLLOW, dir_fd=src_fd), "rb") as src, \
                os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                  dir_fd=dst_fd), "wb") as dst:
            shutil.copyfileobj(src, dst, SKIP_CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
    os.unlink(name, dir_fd=src_fd)  # a pipe or socket has nothing to copy
