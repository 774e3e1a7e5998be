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
    create would give (mkstemp / mkdtemp, and libraries that save through them, make files
    private to the owner): a folder's whole tree gets them, so other users can read a bundle."""
    umask = _umask()
    if Path(tmp).is_dir():
        for root, dirs, files in os.walk(tmp):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~umask)
    os.chmod(tmp, (0o777 if Path(tmp).is_dir() else 0o666) & ~umask)
    os.replace(tmp, path)


#: Free bytes under which a failed write is put down to a full disk (libsndfile reports
#: ENOSPC as a bare "System error.").
_NEARLY_FULL = 1 << 20


def write_error_message(path: str | Path, exc: BaseException) -> str:
    """One line for a write that failed, naming the folder and the reason a user can act on:
    the disk is full, permission is denied, the name is too long."""
    import errno
    import shutil

    folder = Path(path).parent
    code = getattr(exc, "errno", None)
    try:
        full = shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        full = False
    if code in (errno.ENOSPC, errno.EDQUOT) or full:
        return (
            f"no space left to write {Path(path).name} in {folder}: free some space or pick "
            "another folder"
        )
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to {folder}: permission denied (or a read-only file system)"
    if code == errno.ENAMETOOLONG:
        return f"cannot write {Path(path).name[:40]}... in {folder}: the file name is too long"
    text = str(exc).strip()
    reason = getattr(exc, "strerror", None) or (
        text.splitlines()[0] if text else type(exc).__name__
    )
    return f"cannot write {Path(path).name} in {folder}: {reason}"


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


def refuse_nonempty(folder: str | Path, force: bool) -> None:
    """An output folder that holds something is replaced only when asked (`--force`)."""
    from querysep.errors import QuerysepError

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not force:
        raise QuerysepError(f"{folder} is not empty: pass --force to replace it")
