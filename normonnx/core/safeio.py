"""Writes that cannot be turned against the user and reads that cannot hang: the one helper every
command that writes (export, fix, sweep, merge, report, --save-inputs, the cache) goes through.

- An output path must be absent or a regular file (a link, a device, a pipe or a folder is BadInput).
- Every file is first written under a random name made exclusively in the output's own folder (never
  through a link: `O_EXCL | O_NOFOLLOW`), then renamed over the output, so a reader sees the old file or
  the new one and nothing planted at a predictable name is ever written through. It gets the mode the
  umask gives (0644 under 022), like any file open() makes: a team's shared cache or CI artifacts stay
  readable.
- A file appended to or locked is opened without following a link and refused if other hard links
  share it (writing it would change another file).
- A file read must be a regular file once links are followed (a FIFO would block forever).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import BadInput

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def check_output_path(path: Path, what: str = "model") -> None:
    """BadInput unless `path` can receive a new file: its folder exists and is writable, and it is
    absent or a regular file. A symlink or a device is refused: writing through a temp file and a
    rename would replace it, writing into it would write somewhere else."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_symlink():
        raise BadInput(f"output path {path} is a symbolic link: give the {what} file's real path")
    if path.is_dir():
        raise BadInput(f"output path {path} is a directory: give a file name for the {what}")
    if path.exists() and not path.is_file():
        raise BadInput(f"output path {path} exists and is not a regular file (a device or a pipe): give a file path")
    if not parent.is_dir():
        raise BadInput(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise BadInput(f"cannot write {path}: folder {parent} is not writable")


def check_output_folder(path: Path, what: str, alternative: str = "") -> None:
    """BadInput unless `path` can become a new folder: absent (never a link, a file or an existing folder, whose
    files would be mixed with the new ones), in a writable folder."""
    path = Path(path)
    if path.is_symlink() or path.exists():
        raise BadInput(f"{what} {path} exists: give a new folder" + (f" ({alternative})" if alternative else ""))
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise BadInput(f"{what} {path}: folder {parent} does not exist or is not writable")


def check_regular_file(path: Path, what: str) -> None:
    """BadInput unless `path`, links followed, is a regular file (checked before any open: a FIFO or a
    device would block or never end; a link to a regular file, as in a model hub's cache, is fine)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"{what} {path} does not exist") from None
    except OSError as e:
        raise BadInput(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe" if stat.S_ISFIFO(st.st_mode) else \
            "a device or socket"
        raise BadInput(f"{what} {path} is {kind}, not a regular file: give a file")


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder with a random name beside `out` (made exclusively: nothing planted there can be
    written through), removed afterwards; write into it, then `publish` each file."""
    out = Path(out)
    folder = Path(tempfile.mkdtemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}."))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(staged: Path, out: Path, what: str = "output") -> None:
    """Rename a staged file over `out` (checked again: a link or a device placed there since is refused)."""
    check_output_path(Path(out), what)
    os.replace(staged, out)


def atomic_write(path: Path, data: bytes, what: str = "output") -> None:
    """Replace `path` by `data` at once (a reader sees the old file or the new one), through a random
    temporary name created with O_EXCL | O_NOFOLLOW in the same folder."""
    path = Path(path)
    check_output_path(path, what)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600: the file gets what open() would give it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status), else by
    setting and restoring it: every file normonnx writes gets 0666 & ~umask, as open() would give it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def open_own(path: Path, mode: str = "a", what: str = "file"):
    """Open `path` for appending ("a", "ab") or as a lock ("a+"), creating it if absent, never through a
    link, and refuse a file that other hard links share (writing it would change another file)."""
    flags = os.O_CREAT | os.O_APPEND | _NOFOLLOW | _CLOEXEC | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise BadInput(f"{what} {path} is a symbolic link: normonnx never writes through one; remove it") from None
        raise BadInput(f"cannot write {what} {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        why = "has other hard links (writing it would change another file)" if stat.S_ISREG(st.st_mode) else \
            "is not a regular file"
        raise BadInput(f"{what} {path} {why}: remove it")
    text: dict[str, Any] = {} if "b" in mode else {"encoding": "utf-8"}  # Any: fdopen's overloads type each keyword
    return os.fdopen(fd, mode, **text)
