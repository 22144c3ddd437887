"""``densemtl verify-dataset``: one machine-readable report for every dataset layout.

:func:`verify` detects the layout of a folder (a densemtl synthetic set from its ``generator.json``, the
NYUD-v2 variants, PASCAL-Context, mtan Cityscapes) and runs that layout's check. Every check goes through
:func:`check_splits`: it opens each split with its reader (which checks that every file of every task
exists and that the split files are sound), then decodes **every** sample with the reader's strict
decoding (bit depths, label ranges, depth units, shapes) under a progress bar, or only the first one with
``quick``, and compares the counts and image sizes with the released dataset.

The result is a :class:`DatasetReport`: ``str(report)`` is the text the command prints, ``report.to_dict()``
the JSON form (``--json``, ``--report FILE``). Errors (a split or a sample that cannot be read, a
synthetic set that differs from what its generator wrote) make the command exit non-zero; warnings
(counts or sizes that differ from the release: usable, not comparable with published tables) do not,
unless ``--strict``.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MAX_LISTED", "DatasetReport", "SplitCheck", "check_splits", "verify", "verify_pascal", "verify_synthetic"]

MAX_LISTED = 20
"""Unreadable samples listed by name per split (all are counted)."""

_READ_ERRORS = (FileNotFoundError, ValueError, IndexError, OSError, KeyError, RuntimeError)


@dataclass
class SplitCheck:
    """What one split holds.

    Attributes:
        split: split name.
        samples: sample count (None when the split cannot be opened).
        expected: the released dataset's count.
        image_size: the most common (height, width) among the decoded samples.
        error: why the split cannot be opened.
        checked: samples decoded (all of them unless ``quick``).
        failed: samples that could not be decoded.
        sizes: distinct image sizes ``"HxW"`` -> count, when the decoded samples differ in size.
    """

    split: str
    samples: int | None = None
    expected: int | None = None
    image_size: tuple[int, int] | None = None
    error: str | None = None
    checked: int = 0
    failed: int = 0
    sizes: dict[str, int] | None = None


@dataclass
class DatasetReport:
    """The result of checking a dataset folder.

    Attributes:
        root: the folder checked.
        dataset: the registry name of its layout (``nyud``, ``nyud-mt``, ``nyuv2-13``, ``pascal``,
            ``cityscapes``, ``synth-nyud``, ``synth-pascal``).
        description: the layout and the lineages that use it.
        splits: one :class:`SplitCheck` per split.
        notes: protocol consequences of the layout.
        errors: problems that make the dataset unusable as it is (a split or a sample that cannot be read).
        warnings: differences from the released dataset (counts, sizes): usable, not comparable.
        quick: only the first sample of each split was decoded.
        strict: warnings count as problems too (``ok`` is False when there are any).
    """

    root: str
    dataset: str
    description: str
    splits: list[SplitCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    quick: bool = False
    strict: bool = False

    @property
    def ok(self) -> bool:
        """True when no error was found (and, when ``strict``, no warning)."""
        return not self.errors and not (self.strict and self.warnings)

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
            if s.sizes:
                size = f"; {len(s.sizes)} image sizes, most often {s.image_size[0]}x{s.image_size[1]}"
            checked = "first sample decoded" if self.quick else f"{s.checked - s.failed}/{s.checked} decoded"
            lines.append(f"  {s.split}: {s.samples} samples{note}{size} ({checked})")
        lines += [f"  - {n}" for n in self.notes]
        lines += [f"  ! {p}" for p in dict.fromkeys(self.errors + self.warnings)]
        status = "OK" if self.ok else "FAILED"
        status += f": {len(self.errors)} error(s)"
        quick = " (quick: first sample only)" if self.quick else ""
        lines.append(f"  => {status}, {len(self.warnings)} warning(s){quick}")
        return "\n".join(lines)


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _decode(ds: Any, index: int) -> tuple[tuple[int, int] | None, str | None]:
    """(image size, None) of sample ``index`` decoded by the reader, or (None, the error's first line)."""
    try:
        return tuple(int(v) for v in ds.load(index)["meta"]["size"]), None  # type: ignore[return-value]
    except _READ_ERRORS as err:
        return None, _first_line(err)


class _Decoded:
    """A dataset view whose item ``i`` is ``(i, size, error)``: decoding in DataLoader workers."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> tuple[int, tuple[int, int] | None, str | None]:
        return (index, *_decode(self.ds, index))


def _unbatched(item: Any) -> Any:
    return item


def _decode_all(ds: Any, indices: list[int], label: str, progress: bool, workers: int):
    """Yield ``(index, size, error)`` for ``indices`` (in order), with a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=len(indices), desc=label, unit="sample", disable=not progress, file=sys.stderr, leave=False)
    try:
        if workers > 0 and len(indices) > 1:
            from torch.utils.data import DataLoader, Subset

            loader = DataLoader(
                Subset(_Decoded(ds), indices), batch_size=None, num_workers=workers, collate_fn=_unbatched
            )
            items = iter(loader)
        else:
            items = ((i, *_decode(ds, i)) for i in indices)
        for item in items:
            bar.update(1)
            yield item
    finally:
        bar.close()


def check_splits(
    open_split: Callable[[str], Any],
    expected_counts: Mapping[str, int],
    released_size: tuple[int, int] | None,
    *,
    quick: bool = False,
    progress: bool = True,
    workers: int = 0,
    strict_counts: bool = False,
    max_size: tuple[int, int] | None = None,
) -> tuple[list[SplitCheck], list[str], list[str]]:
    """Open every split, decode its samples, compare with the released counts and image size.

    Args:
        open_split: split name -> a reader of that split (``len`` and ``load(i)`` with ``meta['size']``).
        expected_counts: split -> sample count of the released dataset.
        released_size: (height, width) of the released images; None when they vary (PASCAL).
        quick: decode only the first sample of each split (the files of every sample are still checked
            to exist when the split is opened).
        progress: show a progress bar on stderr.
        workers: DataLoader worker processes that decode (0: in this process).
        strict_counts: a count or size that differs is an error (a synthetic set against its generator
            record), not a warning.
        max_size: (height, width) no image should exceed (PASCAL: the 512x512 pad size of the invpt
            protocol); larger images are warned about.

    Returns:
        The split checks, the errors and the warnings.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    splits: list[SplitCheck] = []
    errors: list[str] = []
    warnings: list[str] = []
    differ = errors if strict_counts else warnings
    for split, expected in expected_counts.items():
        try:
            ds = open_split(split)
            n = len(ds)
        except _READ_ERRORS as err:
            splits.append(SplitCheck(split, expected=expected, error=_first_line(err)))
            errors.append(f"split {split!r}: {_first_line(err)}")
            continue
        indices = list(range(min(n, 1) if quick else n))
        sizes: Counter[tuple[int, int]] = Counter()
        failures: list[str] = []
        too_large = 0
        for _index, size, error in _decode_all(ds, indices, f"verify {split}", progress, workers):
            if error is not None:
                failures.append(error)
                continue
            sizes[size] += 1
            if max_size is not None and (size[0] > max_size[0] or size[1] > max_size[1]):
                too_large += 1
        check = SplitCheck(split, n, expected, checked=len(indices), failed=len(failures))
        if sizes:
            check.image_size = sizes.most_common(1)[0][0]
            if len(sizes) > 1:
                check.sizes = {f"{h}x{w}": c for (h, w), c in sizes.most_common()}
        splits.append(check)
        if n == 0:
            errors.append(f"split {split!r} has no samples")
        if failures:
            errors.append(f"split {split!r}: {len(failures)} of {len(indices)} samples cannot be read")
            errors += [f"split {split!r}: {message}" for message in failures[:MAX_LISTED]]
            if len(failures) > MAX_LISTED:
                errors.append(f"split {split!r}: ... and {len(failures) - MAX_LISTED} more unreadable samples")
        if n != expected:
            differ.append(f"split {split!r} has {n} samples, the standard split has {expected}")
        if released_size is not None:
            odd = sorted(s for s in sizes if s != tuple(released_size))
            if odd:
                shown = ", ".join(f"{h}x{w}" for h, w in odd[:3])
                differ.append(
                    f"image size {shown} differs from the released {released_size[0]}x{released_size[1]} "
                    "(e.g. a local conversion): numbers are not directly comparable with the published tables"
                )
        if too_large:
            warnings.append(
                f"split {split!r}: {too_large} image(s) larger than {max_size[0]}x{max_size[1]}, the pad size of the "
                "invpt protocol (they cannot be batched there; the mtinet preset resizes)"
            )
    return splits, list(dict.fromkeys(errors)), list(dict.fromkeys(warnings))


# ------------------------------------------------------------------------------------------ layouts


def verify_synthetic(root: str | Path, **options: Any) -> DatasetReport:
    """Check a densemtl synthetic dataset against its generator record (``generator.json``).

    The counts and image size the generator recorded are what the folder must hold, so any difference
    is an error (a file lost or replaced after generation).

    Raises:
        DatasetNotFoundError: ``root`` has no readable generator record of a known synthetic dataset.
    """
    from densemtl.data.base import DATASETS, DatasetNotFoundError
    from densemtl.data.synthetic.generate import read_marker

    root = Path(root)
    marker = read_marker(root)
    dataset = (marker or {}).get("dataset")
    if dataset not in ("synth-nyud", "synth-pascal"):
        raise DatasetNotFoundError(f"root={root} has no generator.json of a densemtl synthetic dataset")
    args = marker.get("arguments") or {}
    cls = DATASETS.get(dataset)
    counts = {"train": int(args.get("train", 0)), "val": int(args.get("val", 0))}
    size = tuple(args["size"]) if "size" in args else None
    splits, errors, warnings = check_splits(
        lambda split: cls(root, split), counts, size, strict_counts=True, **options
    )
    return DatasetReport(
        root=str(root),
        dataset=dataset,
        description=f"densemtl synthetic dataset {dataset!r} (generator {marker.get('version')}, {args})",
        splits=splits,
        notes=["synthetic: numbers on it are not comparable with any published table"],
        errors=errors,
        warnings=warnings,
        quick=bool(options.get("quick", False)),
    )


PASCAL_COUNTS = {"train": 4998, "val": 5105}
"""PASCAL-Context multi-task split sizes (``spec/protocols.md`` §2.5, §2.7)."""

PASCAL_TEST_NEW = 2498
"""Ids of ``test_new`` (the edge odsF list, a subset of val; ``spec/protocols.md`` §2.5)."""


def is_pascal_root(root: str | Path) -> bool:
    """True when ``root`` has the PASCAL-Context multi-task layout (``ImageSets/Context`` and ``JPEGImages``)."""
    from densemtl.data.pascal import IMAGE_DIR, SPLIT_DIR

    root = Path(root)
    return (root / SPLIT_DIR).is_dir() and (root / IMAGE_DIR).is_dir()


def verify_pascal(root: str | Path, **options: Any) -> DatasetReport:
    """Check a PASCAL-Context multi-task folder (``PASCAL_MT/`` / ``PASCALContext/``): every file of every
    task, the 4,998 / 5,105 split sizes, images no larger than 512x512, and ``test_new`` (2,498 ids, a
    subset of val) when ``ImageSets/Context/test_new.txt`` is present.

    Raises:
        DatasetNotFoundError: ``root`` is not a PASCAL-Context folder.
    """
    from densemtl.data.base import DatasetNotFoundError
    from densemtl.data.pascal import SPLIT_DIR, PascalContext
    from densemtl.data.splits import read_split_ids

    root = Path(root)
    if not is_pascal_root(root):
        raise DatasetNotFoundError(
            f"root={root} is not a PASCAL-Context folder: expected ImageSets/Context/ and JPEGImages/"
        )
    cache_dir = options.pop("cache_dir", None)
    splits, errors, warnings = check_splits(
        lambda split: PascalContext(root, split, cache_dir=cache_dir),
        PASCAL_COUNTS,
        None,
        max_size=(512, 512),
        **options,
    )
    notes = ["val is the evaluation split (5,105 ids); every lineage selects models on it (§2.5)"]
    test_new = root / SPLIT_DIR / "test_new.txt"
    if test_new.is_file():
        try:
            ids = read_split_ids(test_new)
            val = set(read_split_ids(root / SPLIT_DIR / "val.txt"))
        except (FileNotFoundError, ValueError) as err:
            errors.append(f"test_new: {_first_line(err)}")
        else:
            outside = [i for i in ids if i not in val]
            if outside:
                errors.append(f"{test_new} lists {len(outside)} id(s) that are not in val, e.g. {outside[:5]}")
            if len(ids) != PASCAL_TEST_NEW:
                warnings.append(f"test_new has {len(ids)} ids, the standard list has {PASCAL_TEST_NEW}")
            notes.append(f"test_new: {len(ids)} ids (edge odsF is reported on them, §2.5)")
    else:
        notes.append(f"no {SPLIT_DIR}/test_new.txt: edge odsF on all of val differs from the published protocol (§2.5)")
    return DatasetReport(
        root=str(root),
        dataset="pascal",
        description="PASCAL-Context multi-task (ASTMT PASCAL_MT / ATRC PASCALContext, spec/protocols.md §2.4)",
        splits=splits,
        notes=notes,
        errors=errors,
        warnings=warnings,
        quick=bool(options.get("quick", False)),
    )


def verify(
    root: str | Path, quick: bool = False, progress: bool = True, workers: int = 0, cache_dir: str | None = None
) -> DatasetReport:
    """Detect the layout of the dataset at ``root`` and check it.

    Layouts, in the order they are tried: a densemtl synthetic set (``generator.json``), PASCAL-Context,
    mtan Cityscapes, the NYUD-v2 variants.

    Args:
        root: the dataset folder.
        quick: decode only the first sample of each split.
        progress: show a progress bar on stderr.
        workers: processes that decode samples (0: this process).
        cache_dir: PASCAL-Context's part-annotation cache folder (default: its reader's default).

    Raises:
        DatasetNotFoundError: ``root`` holds none of the known layouts.
    """
    from densemtl.data.base import DatasetNotFoundError
    from densemtl.data.cityscapes import is_cityscapes_root, verify_cityscapes
    from densemtl.data.nyud import verify_dataset
    from densemtl.data.synthetic.generate import read_marker

    options: dict[str, Any] = {"quick": quick, "progress": progress, "workers": workers}
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"root={root} is not a folder")
    if read_marker(root) is not None:
        return verify_synthetic(root, **options)
    if is_pascal_root(root):
        return verify_pascal(root, cache_dir=cache_dir, **options)
    if is_cityscapes_root(root):
        return verify_cityscapes(root, **options)
    try:
        return verify_dataset(root, **options)
    except DatasetNotFoundError as err:
        raise DatasetNotFoundError(
            f"{err}; nor a PASCAL-Context folder (ImageSets/Context/ + JPEGImages/), a mtan Cityscapes folder "
            "({train,val}/label_19/) or a densemtl synthetic dataset (generator.json)"
        ) from err
