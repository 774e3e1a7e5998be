"""Atomic writes (a file or folder appears complete under its name, or not at all) and file
hashing."""

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


def atomic_dir(target: Path, save: Callable[[str], Any]) -> None:
    """Calls `save` on a temporary sibling folder of `target`, then puts it in target's place
    (replacing what was there)."""
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        save(tmp)
        if target.exists():
            shutil.rmtree(target)
        publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def holds(folder: str | Path, path: str | Path) -> bool:
    """Whether `folder` is `path` or one of its parents: replacing it would destroy `path`."""
    inside = Path(path).resolve()
    return Path(folder).resolve() in (inside, *inside.parents)


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    import hashlib

    from querysep.errors import ModelLoadError

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(block):
                digest.update(chunk)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()
