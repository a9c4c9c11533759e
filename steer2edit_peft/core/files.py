"""Folders written whole: a reader sees the previous folder or the new one, never a mix or a half-written one.

Everything is written into a hidden staging folder beside the target, flushed to disk, and then swapped in with
one atomic rename (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere the old folder is moved aside first). An
interrupted write leaves the target as it was, plus a hidden ``.NAME.saving-*`` folder that may be deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, Steer2EditError

STAGING_MARK = ".saving-"


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no portable way to read it without setting it
    os.umask(mask)
    return mask


def normalise_modes(folder: Path) -> None:
    """One mode for everything: files 0666 and folders 0777, less the umask (mkdtemp/mkstemp would leave 0600)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        descriptor = os.open(root, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _link_or_copy(source: Path, destination: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, copy_function=_link_file, symlinks=True)
    else:
        _link_file(str(source), str(destination))


def _link_file(source: str, destination: str) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), destination)
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system or kernel cannot exchange
        return False
    raise OSError(error, os.strerror(error), str(second))


def publish(staging: Path, target: Path, keep_other_entries: bool) -> None:
    """Put the finished ``staging`` folder at ``target`` in one atomic step; ``staging`` is gone afterwards.

    ``keep_other_entries``: entries of an existing ``target`` that ``staging`` does not have (another adapter's
    subfolder, a README the user wrote) are carried over, as hard links where possible.
    """
    if keep_other_entries and target.is_dir():
        for entry in target.iterdir():
            if not (staging / entry.name).exists() and STAGING_MARK not in entry.name:
                _link_or_copy(entry, staging / entry.name)
    normalise_modes(staging)
    _fsync_tree(staging)
    if not target.exists():
        os.rename(staging, target)
    elif not target.is_dir() or target.is_symlink():
        raise Steer2EditError(f"{target} exists and is not a folder; choose another path")
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the previous folder
    else:
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{STAGING_MARK}old-"))
        os.rmdir(aside)
        os.rename(target, aside)
        os.rename(staging, target)
        shutil.rmtree(aside)
    with contextlib.suppress(OSError):
        descriptor = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str], keep_other_entries: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without error, it replaces ``target`` atomically.

    On an error the target is untouched and the staging folder is removed.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{STAGING_MARK}"))
    try:
        yield staging
        publish(staging, target, keep_other_entries)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_output_folder(folder: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder (or a file) unless ``overwrite`` says so."""
    if folder.exists() and not folder.is_dir():
        raise Steer2EditError(f"{folder} exists and is not a folder; choose another path")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise Steer2EditError(f"{folder} exists and is not empty; choose a new folder or pass --overwrite")


def read_jsonl(path: Path) -> list[Any]:
    """The records of a JSON Lines file (blank lines skipped), or a DataError naming the file and the line."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: malformed JSON line {number} ({error})") from error
    return records
