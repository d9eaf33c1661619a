"""Atomic file and directory writes: write to a temporary name in the same folder, then rename into place.

A process killed at any point of a write (SIGKILL, a lost machine) leaves the previous file or directory readable
at its name, or the complete new one; directories are swapped in one step where the system allows it, and what a
killed writer leaves beside them is repaired by the next write (:func:`recover_dir`).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (atomic on POSIX)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the permissions a plain open() would
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` as a whole.

    An existing ``path`` is only touched once the new content is complete, and then swapped with it in one atomic
    ``renameat2(RENAME_EXCHANGE)`` (Linux), so a crash at any moment leaves either the old or the new directory at
    ``path``, never a half-written one and never none. Where the exchange is unavailable (another OS, a file system
    without it) the old directory is first renamed to ``.NAME.old.TAG`` and the new one renamed into place; a crash
    between those two renames leaves ``path`` missing and the old content at ``.NAME.old.TAG``, which
    :func:`recover_dir` (called here before every write, and by readers such as checkpoint loading) puts back.
    Temporary folders of dead writers are removed on the next write.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_writer_tag()}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        if tmp.exists():  # the unfinished new content
            shutil.rmtree(tmp, ignore_errors=True)


def staging_path(path: str | os.PathLike[str]) -> Path:
    """A folder name beside ``path`` for content to be moved there later by :func:`replace_dir` (hidden, marked
    with this process, so that :func:`recover_dir` removes it should this process die first)."""
    target = Path(path)
    return target.with_name(f".{target.name}.{_writer_tag()}.staged.tmp")


def replace_dir(new: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Move the complete directory ``new`` to ``path`` in one step (see :func:`atomic_dir`), removing what was
    there; ``new`` must be on the same file system (beside ``path``)."""
    new, target = Path(new), Path(path)
    recover_dir(target)
    if not target.exists():
        os.replace(new, target)
    elif exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` holds the old content now
    else:
        old = target.with_name(f".{target.name}.old.{_writer_tag()}")
        os.replace(target, old)
        os.replace(new, target)  # a crash just before this line is what recover_dir repairs
        shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None
_renameat2_looked_up = False


def _renameat2_function() -> Any:
    """libc's ``renameat2`` (glibc 2.28+), or None where there is none."""
    global _renameat2, _renameat2_looked_up
    if not _renameat2_looked_up:
        _renameat2_looked_up = True
        if sys.platform.startswith("linux"):
            try:
                function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2")
                function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                function.restype = ctypes.c_int
                _renameat2 = function
            except (OSError, AttributeError):
                _renameat2 = None
    return _renameat2


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system cannot, so that the caller falls back to two renames."""
    function = _renameat2_function()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(a), None, os.fspath(b))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _host_id() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _writer_tag() -> str:
    """``PID-HOSTID``: which process wrote a temporary folder, so that only leftovers of dead writers on this
    machine are ever removed (a folder shared between machines may hold a live writer's folder from elsewhere)."""
    return f"{os.getpid()}-{_host_id()}"


def _dead_writer(leftover: Path, target: Path) -> bool:
    """Whether ``leftover`` (``.NAME.old.TAG`` or ``.NAME.TAG.XXXX.tmp``) belongs to a writer on this machine that
    is gone; False for other names and other machines' writers."""
    rest = leftover.name[len(target.name) + 2:]
    tag = rest[len("old."):] if rest.startswith("old.") else rest.split(".", 1)[0]
    pid, _, host = tag.partition("-")
    return pid.isdigit() and host == _host_id() and not pid_alive(int(pid))


def recover_dir(path: str | os.PathLike[str]) -> bool:
    """Repair what a writer of :func:`atomic_dir` killed mid-way left beside ``path``; True if ``path`` was put back.

    If ``path`` is missing and a dead writer left its previous content at ``.NAME.old.TAG``, that content is moved
    back (the newest, if several); other leftovers of dead writers (old copies, unfinished ``.tmp`` folders) are
    removed. Folders of live writers are left alone: they may be half-way through a write.
    """
    target = Path(path)
    if not target.parent.is_dir():
        return False
    dead = [p for p in target.parent.glob(f".{glob.escape(target.name)}.*") if p.is_dir() and _dead_writer(p, target)]
    olds = sorted((p for p in dead if p.name.startswith(f".{target.name}.old.")), key=lambda p: p.stat().st_mtime)
    restored = False
    if olds and not target.exists():
        try:
            os.rename(olds[-1], target)
            restored = True
        except OSError:  # another process recovered it (or wrote a new one) first
            pass
    for leftover in dead:
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)
    return restored
