"""Atomic file writes: a file appears complete under its name, or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: str | Path) -> None:
    """Renames a finished temporary file or folder into place with the permissions a normal
    create would give (mkstemp / mkdtemp make them private to the owner)."""
    mode = 0o777 if Path(tmp).is_dir() else 0o666
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, path)


def atomic_write(path: Path, writer: Callable[[Path], Any]) -> None:
    """Calls `writer` on a temporary sibling of `path`, then renames it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(Path(tmp))
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
