"""Writing files a user can trust: each file whole, and only the files the writer owns.

A file is written to a hidden temporary file beside its final path, flushed to disk and moved into place with one
``os.replace``, so a reader sees the old file or the new one, never half of one. A writer of several files may stage
them in a hidden folder it creates inside the target folder, and then moves each into place, the file that vouches
for the others (an adapter's config, which records the digest of its weights) last. Nothing else in the target folder
is read, linked, moved, re-moded or deleted: other files, symlinks, FIFOs, other processes' files and the folder
itself stay as they were, and a symlinked folder is written through. An interrupted write may leave a hidden
``.steer2edit-*`` file or folder behind, which may be deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, Steer2EditError

TEMPORARY_PREFIX = ".steer2edit-"
# Moved into place after every other file of their folder: each tells a reader that the rest is complete.
VOUCHING_FILES = ("adapter_config.json", "model.safetensors.index.json", "config.json")


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


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file (mkstemp would leave 0600)."""
    return 0o666 & ~_umask()


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):  # a file system without fsync on folders (some network mounts)
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _place(temporary: Path, destination: Path, overwrite: bool) -> None:
    """Move a finished file to ``destination``; without ``overwrite``, never over a file that exists by then."""
    if overwrite:
        if destination.is_dir() and not destination.is_symlink():
            raise Steer2EditError(f"{destination} is a folder; cannot write a file there")
        os.replace(temporary, destination)
        return
    try:
        os.link(temporary, destination)  # fails if destination exists, however late it appeared
    except FileExistsError as error:
        raise Steer2EditError(
            f"{destination} exists; choose another folder or pass overwrite=True (--overwrite)"
        ) from error
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if os.path.lexists(destination):  # a file system without hard links: check, then rename
            raise Steer2EditError(
                f"{destination} exists; choose another folder or pass overwrite=True (--overwrite)"
            ) from error
        os.replace(temporary, destination)
        return
    os.unlink(temporary)


@contextlib.contextmanager
def new_file(path: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; when the block ends, it takes ``path``'s place whole.

    On an error nothing is left behind and ``path`` is as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMPORARY_PREFIX}{path.name}.")
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, new_file_mode())
        _fsync(temporary)
        _place(temporary, path, overwrite)
        _fsync(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def write_text(path: str | os.PathLike[str], text: str, overwrite: bool = True) -> Path:
    """Write a UTF-8 text file whole (see :func:`new_file`)."""
    with new_file(path, overwrite) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def refuse_existing(folder: str | os.PathLike[str], names: Iterable[str], overwrite: bool) -> None:
    """Refuse, before anything is written, to replace any of ``names`` in ``folder`` unless ``overwrite``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise Steer2EditError(f"{folder} exists and is not a folder; choose another path")
    if overwrite or not folder.is_dir():
        return
    existing = sorted(name for name in names if os.path.lexists(folder / name))
    if existing:
        raise Steer2EditError(
            f"{folder} already holds {', '.join(existing)}; choose another folder or pass overwrite=True (--overwrite)"
        )


def check_output_folder(folder: Path, overwrite: bool, names: Iterable[str] | None = None) -> None:
    """The CLI's check before any work: the files it will write (``names``) must not exist unless ``overwrite``.

    Where the names are not known in advance (``None``: a merged model's shards), the folder must be empty.
    """
    if names is not None:
        refuse_existing(folder, names, overwrite)
        return
    if folder.exists() and not folder.is_dir():
        raise Steer2EditError(f"{folder} exists and is not a folder; choose another path")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise Steer2EditError(f"{folder} exists and is not empty; choose a new folder or pass --overwrite")


def _publishing_order(staging: Path) -> list[Path]:
    files = [path for path in staging.rglob("*") if path.is_file() and not path.is_symlink()]
    # Data first, then what describes it (a README), then what vouches for it.
    return sorted(
        files, key=lambda path: (path.name in VOUCHING_FILES, path.name == "README.md", len(path.parts), str(path))
    )


def publish(staging: Path, folder: Path, overwrite: bool) -> list[Path]:
    """Move every file of ``staging`` (a folder this process made) to the same relative path under ``folder``."""
    files = _publishing_order(staging)
    if not overwrite:
        refuse_existing(folder, [str(path.relative_to(staging)) for path in files], overwrite)
    placed = []
    for source in files:
        destination = folder / source.relative_to(staging)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(source, new_file_mode())
        _fsync(source)
        _place(source, destination, overwrite)
        placed.append(destination)
    for parent in sorted({path.parent for path in placed}):
        _fsync(parent)
    return placed


@contextlib.contextmanager
def staged(folder: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a private staging folder inside ``folder``; when the block ends without error, each file written there
    is moved into ``folder`` (see :func:`publish`). On an error ``folder`` is as it was: where it did not exist, the
    folders made for it are removed again."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise Steer2EditError(f"{folder} exists and is not a folder; choose another path")
    made = [path for path in (folder, *folder.absolute().parents) if not path.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=TEMPORARY_PREFIX))
        try:
            yield staging
            publish(staging, folder, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        for path in made:
            with contextlib.suppress(OSError):  # left in place if something else wrote into it meanwhile
                path.rmdir()
        raise


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
