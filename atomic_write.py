"""Files written whole or not at all, the one way every writer of the package writes.

The new content goes to a hidden temporary name in the target's own folder, ``.NAME.PID.RANDOM.tmp``, and is
moved onto the target with ``os.replace`` (atomic within one file system): a reader (a parallel run, a resumed
one, another process loading the same cache) sees the old file or the whole new one, never a torn one.  A
write that fails or is interrupted removes its temporary and leaves the old file as it was; one killed outright
(SIGKILL) cannot, and the next run that writes the same target removes it (:func:`remove_stale_temporaries`).
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_text_atomic", "write_bytes_atomic", "remove_stale_temporaries"]


def _temporary_beside(target: Path) -> Path:
    """A hidden name in ``target``'s folder, unique to this process and this write."""
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; when the block ends it replaces ``path``
    (``os.replace``), and when the block raises it is removed and ``path`` stays as it was.  The temporary's
    name ends in ``.tmp``: a writer that picks its format by the suffix must be told the format."""
    target = Path(path)
    temporary = _temporary_beside(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)   # already gone after a rename; left over after a failure


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` into ``path`` (UTF-8) through :func:`atomic_path`; returns ``path`` as a Path."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` into ``path`` through :func:`atomic_path`; returns ``path`` as a Path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries beside ``path`` that a writer killed mid-write left (``.NAME.PID.RANDOM.tmp`` whose
    process no longer runs); a live writer's (another process writing the same target now) is kept.  Returns
    what it removed."""
    target = Path(path)
    removed = []
    for candidate in target.parent.glob(f".{target.name}.*.tmp"):
        pid = candidate.name[len(target.name) + 2:].split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
