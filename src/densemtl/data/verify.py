"""``densemtl verify-dataset``: one machine-readable report for every dataset layout.

A layout's check (``nyud.verify_dataset``, ``cityscapes.verify_cityscapes``) opens each split with its
reader (which checks that every file of every task exists), decodes the first sample and compares the
counts and image size with the released dataset, through :func:`check_splits`. The result is a
:class:`DatasetReport`: ``str(report)`` is the text the command prints, ``report.to_dict()`` the JSON form
(``--json``). Errors (a split that cannot be read) make the command exit non-zero; warnings (counts or
sizes that differ from the release, so numbers are not comparable with published tables) do not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DatasetReport", "SplitCheck", "check_splits", "verify"]


@dataclass
class SplitCheck:
    """What one split holds: sample count, the first sample's (height, width), and the standard count."""

    split: str
    samples: int | None = None
    expected: int | None = None
    image_size: tuple[int, int] | None = None
    error: str | None = None


@dataclass
class DatasetReport:
    """The result of checking a dataset folder.

    Attributes:
        root: the folder checked.
        dataset: the registry name of its layout (``nyud``, ``nyud-mt``, ``nyuv2-13``, ``cityscapes``).
        description: the layout and the lineages that use it.
        splits: one :class:`SplitCheck` per split.
        notes: protocol consequences of the layout.
        errors: problems that make the dataset unusable as it is (a split that cannot be read).
        warnings: differences from the released dataset (counts, sizes): usable, not comparable.
    """

    root: str
    dataset: str
    description: str
    splits: list[SplitCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields above plus ``ok``."""
        out = asdict(self)
        for split in out["splits"]:
            if split["image_size"] is not None:
                split["image_size"] = list(split["image_size"])
        out["ok"] = self.ok
        return out

    def __str__(self) -> str:
        lines = [f"{self.root}: {self.description}"]
        for s in self.splits:
            if s.error is not None:
                continue
            note = "" if s.expected is None or s.samples == s.expected else f"  ! expected {s.expected}"
            size = f"; image size {s.image_size[0]}x{s.image_size[1]}" if s.image_size else ""
            lines.append(f"  {s.split}: {s.samples} samples{note}{size}")
        lines += [f"  - {n}" for n in self.notes]
        lines += [f"  ! {p}" for p in dict.fromkeys(self.errors + self.warnings)]
        return "\n".join(lines)


def check_splits(
    open_split: Callable[[str], Any],
    expected_counts: Mapping[str, int],
    released_size: tuple[int, int],
) -> tuple[list[SplitCheck], list[str], list[str]]:
    """Open every split, decode its first sample, compare with the released counts and image size.

    Args:
        open_split: split name -> a reader of that split (``len`` and ``load(0)`` with ``meta['size']``).
        expected_counts: split -> sample count of the released dataset.
        released_size: (height, width) of the released images.

    Returns:
        The split checks, the errors and the warnings.
    """
    splits: list[SplitCheck] = []
    errors: list[str] = []
    warnings: list[str] = []
    for split, expected in expected_counts.items():
        try:
            ds = open_split(split)
            size = tuple(int(v) for v in ds.load(0)["meta"]["size"])
        except (FileNotFoundError, ValueError, IndexError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            splits.append(SplitCheck(split, expected=expected, error=message))
            errors.append(f"split {split!r}: {message}")
            continue
        splits.append(SplitCheck(split, len(ds), expected, size))
        if len(ds) != expected:
            warnings.append(f"split {split!r} has {len(ds)} samples, the standard split has {expected}")
        if size != tuple(released_size):
            warnings.append(
                f"image size {size[0]}x{size[1]} differs from the released {released_size[0]}x{released_size[1]} "
                "(e.g. a local conversion): numbers are not directly comparable with the published tables"
            )
    return splits, errors, list(dict.fromkeys(warnings))


def verify(root: str | Path) -> DatasetReport:
    """Detect the layout of the dataset at ``root`` and check it (NYUD-v2 variants, mtan Cityscapes).

    Raises:
        DatasetNotFoundError: ``root`` holds none of the known layouts.
    """
    from densemtl.data.cityscapes import is_cityscapes_root, verify_cityscapes
    from densemtl.data.nyud import verify_dataset

    return verify_cityscapes(root) if is_cityscapes_root(root) else verify_dataset(root)
