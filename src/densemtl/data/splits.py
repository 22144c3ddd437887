"""Split files (one sample id per line): read them strictly and refuse splits that share ids.

A split file that repeats an id, or a validation split that lists training ids, silently biases every
number computed on it; a file in another encoding used to fail deep inside Python. Every reader of a
layout with split files goes through :func:`read_split_ids` and :func:`check_disjoint_splits`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["check_disjoint_splits", "read_split_ids"]

_SHOWN = 5  # ids named in an error message


def read_split_ids(path: str | Path) -> list[str]:
    """The ids of a split file, in order: one per line, surrounding blanks stripped, empty lines skipped.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not UTF-8 text, lists no ids, or lists an id twice (the error names the
            file and the repeated ids).
    """
    path = Path(path)
    ids = _ids(path)
    if not ids:
        raise ValueError(f"split file {path} lists no ids; expected one sample id per line")
    repeated = [name for name, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(
            f"split file {path} lists {len(repeated)} id(s) more than once, e.g. {repeated[:_SHOWN]}; every "
            "sample must appear once (a repeated id counts twice in training and in every metric)"
        )
    return ids


def _ids(path: Path) -> list[str]:
    """The non-empty stripped lines of a UTF-8 split file (a clear error for another encoding)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"split file {path} is not UTF-8 text (byte {err.start}: {err.reason}); expected one sample id per line"
        ) from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_disjoint_splits(split: str, ids: Sequence[str], others: Mapping[str, Path]) -> None:
    """Raise a ``ValueError`` when split ``split`` shares ids with one of the ``others`` split files.

    Args:
        split: the name of the split being opened.
        ids: its ids.
        others: other split name -> its split file; files that do not exist (or list nothing) are skipped.
    """
    mine = set(ids)
    for name, path in others.items():
        if name == split or not Path(path).is_file():
            continue
        shared = sorted(mine.intersection(_ids(Path(path))))
        if shared:
            raise ValueError(
                f"splits {split!r} and {name!r} share {len(shared)} id(s), e.g. {shared[:_SHOWN]} (see {path}); "
                "training and evaluation splits must be disjoint, or every number measured on the evaluation "
                "split is inflated"
            )
