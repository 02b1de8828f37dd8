"""Atomic artifact writes: build under a temporary name in the same folder, then ``os.replace``.

A killed or failed run never leaves a half-written file or folder under the final name, and an existing
good artifact survives a failed attempt untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from fm_edge.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _parent(final: Path) -> Path:
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {str(parent)!r}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"output folder {str(parent)!r} is not writable")
    return parent


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike):
    """Yield a temporary path beside ``final``; on success it replaces ``final``, on error it is removed."""
    final = Path(final)
    parent = _parent(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the artifact the usual mode
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` (old one removed)."""
    final = Path(final)
    parent = _parent(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(final: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_file(final) as tmp:
        tmp.write_bytes(data)


def remove_leftovers(parent: str | os.PathLike, pattern: str) -> None:
    """Delete the temporaries a killed atomic_file/atomic_dir left in ``parent`` for final names matching
    the glob ``pattern`` (``.NAME.XXXX.tmp``, and ``.NAME.XXXX.old`` from a replaced folder)."""
    for suffix in (".tmp", ".old"):
        for p in Path(parent).glob(f".{pattern}.*{suffix}"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def prepare_output_dir(output_dir: str | os.PathLike) -> tuple[Path, bool]:
    """Create the output folder if needed: (path, created now?); a UsageError if it cannot be written."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output dir {str(out)!r} is a file, not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output dir {str(out)!r}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"output dir {str(out)!r} is not writable")
    return out, created
