"""Results files: the versioned record schema shared by sweep, merge and report, reading that
reports every malformed line with its number, appending that is flushed per record, and the lock
that keeps one writer per output folder.

A results file is data from elsewhere (a CI artifact, a shard from another machine): nothing in it
is trusted until `parse_record` has checked it against the schema below.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput
from .safeio import atomic_write, open_own

RESULTS = "results.jsonl"
META = "meta.json"
LOCK = ".lock"
REJECTED = "results.rejected.jsonl"
SCHEMA = 3  # bump when a record's fields change meaning; 1 was normonnx 0.1 (no "schema" field)
# schema 2 (normonnx 0.2) said "error" where 3 says "not checked" or "internal error": still read, upgraded
READABLE = (2, 3)

# type -> field -> Python type every record of that type must carry
FIELDS: dict[str, dict[str, type]] = {
    "case": {"case_id": str, "status": str, "norm": str, "variant": str, "opset": int, "exporter": str,
             "dtype": str, "provider": str, "versions": dict},
    "bench": {"case_id": str, "status": str, "norm": str, "dtype": str, "provider": str, "opset": int,
              "versions": dict},
}
STATUSES = {"case": ("pass", "fail", "not checked", "internal error", "mismatch", "unsupported"),
            "bench": ("timed", "not checked", "internal error")}
OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "inputs": dict, "records": list, "reason": (str, type(None)), "error": (str, type(None)),
    "max_abs_err": (int, float, type(None)), "ops": dict, "worst_input": (str, type(None))}


class RecordError(ValueError):
    """Why one line is not a valid record."""


def make_record(type_: str, **fields) -> dict:
    """A record ready to write: stamped with the schema and checked like a line read back."""
    rec = {"schema": SCHEMA, "type": type_, **fields}
    check_record(rec)
    return rec


def check_record(rec: object) -> dict:
    if not isinstance(rec, dict):
        raise RecordError(f"a JSON {type(rec).__name__}, not an object")
    if "schema" not in rec:
        raise RecordError("no 'schema' field: written by normonnx 0.1 or by something else")
    if rec["schema"] not in READABLE:
        raise RecordError(f"schema {rec['schema']!r}; this normonnx reads schema {', '.join(map(str, READABLE))}")
    if rec["schema"] == 2:  # a schema-2 "error" is a case that could not be checked
        rec.update(schema=SCHEMA, status="not checked" if rec.get("status") == "error" else rec.get("status"))
    t = rec.get("type")
    if t not in FIELDS:
        raise RecordError(f"type {t!r} is not one of {', '.join(FIELDS)}")
    for name, typ in FIELDS[t].items():
        v = rec.get(name)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise RecordError(f"field {name!r} is {json.dumps(v)[:40] if name in rec else 'missing'}, "
                              f"must be {typ.__name__}")
    if rec["status"] not in STATUSES[t]:
        raise RecordError(f"status {rec['status']!r} is not one of {', '.join(STATUSES[t])}")
    for name, types in OPTIONAL.items():
        if name in rec and not isinstance(rec[name], types):
            raise RecordError(f"field {name!r} has the wrong type")
    if t == "bench" and rec["status"] == "timed" and not all(isinstance(b, dict) for b in rec.get("records", [])):
        raise RecordError("bench 'records' must be a list of objects")
    return rec


@dataclass(frozen=True)
class BadLine:
    lineno: int
    why: str
    raw: bytes

    def __str__(self) -> str:
        return f"line {self.lineno}: {self.why}"


def read_results(path: Path) -> tuple[list[dict], list[BadLine]]:
    """(valid records, malformed lines) of a results file. A torn last line (a kill mid-write) and a
    repeated case_id are malformed lines too: the first record of a case wins."""
    if not path.is_file():
        return [], []
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    lines = data.split(b"\n")
    records: list[dict] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        torn = i == len(lines)  # no newline after it
        try:
            rec = check_record(json.loads(raw.decode("utf-8")))
        except UnicodeDecodeError:
            bad.append(BadLine(i, "not UTF-8 text", raw))
            continue
        except (json.JSONDecodeError, RecordError) as e:
            why = "torn last line (a write was interrupted)" if torn and isinstance(e, json.JSONDecodeError) else \
                f"not a valid record ({e})"
            bad.append(BadLine(i, why, raw))
            continue
        if rec["case_id"] in seen:
            bad.append(BadLine(i, f"duplicate of case {rec['case_id'][:60]} (line {seen[rec['case_id']]})", raw))
            continue
        seen[rec["case_id"]] = i
        records.append(rec)
    return records, bad


def read_meta(folder: Path) -> dict:
    """meta.json of a results folder ({} if absent); BadInput naming the file if it is not a JSON object."""
    p = folder / META
    if not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{p} is corrupt ({type(e).__name__}): rerun the sweep, or delete it") from None
    if not isinstance(meta, dict):
        raise BadInput(f"{p} is corrupt (a JSON {type(meta).__name__}, not an object): rerun the sweep, or delete it")
    return meta


def versions_diff(a: dict | None, b: dict | None) -> list[str]:
    """The tool names whose versions differ between two records' `versions`."""
    a, b = a or {}, b or {}
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def write_records(path: Path, records: list[dict]) -> None:
    """Replace `path` by these records, atomically (a reader sees the old file or the new one)."""
    atomic_write(path, b"".join(json.dumps(r, sort_keys=True, default=str).encode() + b"\n" for r in records))


def quarantine(folder: Path, bad: list[BadLine], records: list[dict]) -> Path:
    """Move malformed lines out of results.jsonl into results.rejected.jsonl (kept, never deleted)
    and rewrite results.jsonl with the valid records only: their cases then run again on resume."""
    rejected = folder / REJECTED
    with open_own(rejected, "ab", "rejected-lines file") as f:
        for b in bad:
            f.write(b.raw.rstrip(b"\n") + b"\n")
    write_records(folder / RESULTS, records)
    return rejected


class ResultsWriter:
    """Appends one record per line, flushed and fsynced as it is written: a kill loses at most the
    record being written (a torn last line, which the next read reports and resume re-runs)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._f = open_own(path, "a", "results file")
            if self._f.tell() and not path.read_bytes().endswith(b"\n"):
                self._f.write("\n")  # a write cut just before its newline: never glue a record onto it
        except OSError as e:
            raise BadInput(f"cannot write {path}: {e.strerror}") from None

    def write(self, record: dict) -> None:
        check_record(record)
        try:
            self._f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:  # a full disk, a folder made read-only mid-run: the lines before stay valid
            raise BadInput(f"cannot write {self.path}: {e.strerror}; the results before this case are kept "
                           "(rerun with --resume once there is room)") from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass  # the write that failed has said so


class FolderLock:
    """One writer per output folder: an exclusive flock on OUT/.lock, held for the whole run, with
    the holder's pid and host written in it for the message a second writer gets. The kernel drops
    the lock when the holder dies, so a killed sweep never leaves a stale lock behind."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self._f = None

    def __enter__(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return self
        f = open_own(self.path, "a+", "lock file")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()[:200] or "another process"
            f.close()
            raise BadInput(f"{self.path.parent} is being written by another normonnx ({holder}): wait for it to "
                           "finish, or choose another output folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()  # closing releases the flock
            self._f = None
