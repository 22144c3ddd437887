"""Folders densemtl writes as a whole (converted and generated datasets), and the only way it replaces one.

A dataset folder is built in a temporary sibling folder (same parent, so the same filesystem), its marker
file is written last, and only then is it renamed into place. ``overwrite`` replaces an existing folder
only when that folder carries a densemtl marker (:data:`OWNER_MARKER`, or a synthetic dataset's
``generator.json``): a folder densemtl did not write is never deleted, whatever the options. Because the
new folder is complete before the old one is touched, a bad input (an unreadable ``.mat``, a wrong
argument) or an interrupted run leaves the old folder as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from densemtl.io import atomic_write_text

__all__ = [
    "LEGACY_MARKERS",
    "OWNER_MARKER",
    "FolderExistsError",
    "build_folder",
    "check_replaceable",
    "is_densemtl_folder",
    "write_owner_marker",
]

OWNER_MARKER = "densemtl.json"
"""File in a folder densemtl wrote as a whole: ``{"written_by": "densemtl", "command": ..., ...}``."""

LEGACY_MARKERS = ("generator.json",)
"""Other marker files densemtl writes (a finished synthetic dataset's generator record)."""


class FolderExistsError(FileExistsError, ValueError):
    """An output folder is in the way: not empty without ``overwrite``, or not written by densemtl."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_densemtl_folder(path: str | Path) -> bool:
    """True when ``path`` is a real folder (not a link) holding a densemtl marker file."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    marker = _read_json(path / OWNER_MARKER)
    if isinstance(marker, dict) and marker.get("written_by") == "densemtl":
        return True
    for name in LEGACY_MARKERS:
        legacy = _read_json(path / name)
        if isinstance(legacy, dict) and {"dataset", "version"} <= set(legacy):
            return True
    return False


def write_owner_marker(folder: str | Path, command: str, details: Mapping[str, Any] | None = None) -> Path:
    """Write :data:`OWNER_MARKER` into ``folder``: it was written by densemtl ``command`` (JSON ``details``)."""
    record = {"written_by": "densemtl", "command": command, **dict(details or {})}
    return atomic_write_text(Path(folder) / OWNER_MARKER, json.dumps(record, indent=2, default=str) + "\n")


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def check_replaceable(out: str | Path, overwrite: bool) -> None:
    """Raise unless ``out`` is absent, an empty folder, or (with ``overwrite``) a folder densemtl wrote.

    Raises:
        FolderExistsError: naming ``out`` and why it is kept.
    """
    out = Path(out)
    if not (out.exists() or out.is_symlink()) or _is_empty_dir(out):
        return
    if not overwrite:
        raise FolderExistsError(f"output folder {out} is not empty; pass overwrite=True to replace it")
    if not is_densemtl_folder(out):
        raise FolderExistsError(
            f"output folder {out} was not written by densemtl (no {OWNER_MARKER} or generator.json marker in it), so "
            "overwrite=True does not delete it: remove it yourself or choose another folder"
        )


def build_folder(
    out: str | Path,
    build: Callable[[Path], Any],
    mark: Callable[[Path], Any],
    overwrite: bool = False,
) -> Path:
    """Build a folder in a temporary sibling, mark it, and swap it in for ``out``.

    Args:
        out: the final folder.
        build: writes the contents into the folder it is given (raising leaves ``out`` untouched).
        mark: writes the marker file into the finished folder (called after ``build``).
        overwrite: replace an existing ``out`` that densemtl wrote (:func:`is_densemtl_folder`).

    Returns:
        ``out`` as a :class:`Path`.

    Raises:
        FolderExistsError: ``out`` is not empty and either ``overwrite`` is False or densemtl did not write it
            (checked before and again right before the swap).
    """
    out = Path(out)
    check_replaceable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    try:
        build(tmp)
        mark(tmp)
        check_replaceable(out, overwrite)  # the folder may have changed while building
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-"))
            old.rmdir()
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
