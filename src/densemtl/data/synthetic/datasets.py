"""Registered readers of the synthetic datasets and the generate-once cache used by the DataModule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from densemtl.data.base import register_dataset
from densemtl.data.nyud import NYU13_CLASSES, NYUD
from densemtl.data.pascal import PART_CLASSES, VOC_CLASSES, PascalContext
from densemtl.data.synthetic.generate import MARKER, json_arguments, parse_size, read_marker
from densemtl.data.synthetic.synth_nyud import generate_synth_nyud
from densemtl.data.synthetic.synth_pascal import generate_synth_pascal

__all__ = ["SYNTHETIC_DATASETS", "SynthNYUD", "SynthPascal", "SyntheticSpec"]


@register_dataset("synth-nyud")
class SynthNYUD(NYUD):
    """Synthetic rooms (:func:`~densemtl.data.synthetic.generate_synth_nyud`) in the ``NYUDv2/`` layout.

    Same files and decoding as :class:`~densemtl.data.nyud.NYUD`, with the 13 NYUv2-13 classes. Family
    ``nyud``: the layout has the four NYUD-v2 tasks (semseg, depth, normals, edge), so the NYUD-v2 loss
    weights apply (``nyuv2_13`` has no edge task).
    """

    dataset_name: ClassVar[str] = "synth-nyud"
    family: ClassVar[str] = "nyud"
    classes: ClassVar[dict[str, tuple[str, ...]]] = {"semseg": NYU13_CLASSES}


@register_dataset("synth-pascal")
class SynthPascal(PascalContext):
    """Synthetic object scenes (:func:`~densemtl.data.synthetic.generate_synth_pascal`) in ``PASCAL_MT/``.

    Same files and decoding as :class:`~densemtl.data.pascal.PascalContext`: 21-class semseg, 7 human
    parts, saliency, normals (masked by the ``LabelMap``) and edges from the ``LabelMap``.
    """

    family: ClassVar[str] = "pascal"
    classes: ClassVar[dict[str, tuple[str, ...]]] = {"semseg": VOC_CLASSES, "human_parts": PART_CLASSES}


@dataclass(frozen=True)
class SyntheticSpec:
    """How to read and (once) generate a synthetic dataset.

    Attributes:
        reader: registry name of the reader (``synth-nyud``, ``synth-pascal``).
        generate: the generator ``(out, **kwargs) -> Path``.
    """

    reader: str
    generate: Callable[..., Path]

    def ensure(self, root: str | Path, **generate_kwargs: Any) -> Path:
        """Return ``root`` holding this dataset, generating it first when it is missing.

        Generation goes into a temporary sibling folder that is renamed to ``root`` only when complete,
        so an interrupted run leaves nothing that passes for a dataset. A finished dataset made with
        other arguments, or a non-empty ``root`` that is not a finished dataset, raises instead of
        being overwritten.

        Args:
            root: dataset folder.
            **generate_kwargs: arguments of the generator (``train``, ``val``, ``size``, ``seed``,
                ``workers``, ...); ``workers`` does not change the data and is not compared.
        """
        root = Path(root)
        wanted = self._arguments(generate_kwargs)
        marker = read_marker(root)
        if marker is not None:
            if marker.get("dataset") != self.reader or marker.get("arguments") != wanted:
                raise ValueError(
                    f"{root} holds {marker.get('dataset')!r} generated with {marker.get('arguments')}, not "
                    f"{self.reader!r} with {wanted}; delete it or choose another folder"
                )
            return root
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise ValueError(
                f"{root} exists but is not a finished {self.reader!r} dataset (no {MARKER}); delete it or "
                "choose another folder"
            )
        if root.is_dir():
            root.rmdir()
        try:
            return self.generate(root, **generate_kwargs)
        except ValueError:
            if read_marker(root) is not None:  # another process finished it first
                return self.ensure(root, **generate_kwargs)
            raise

    def _arguments(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The recorded arguments that ``kwargs`` would produce (defaults filled in)."""
        import inspect

        params = inspect.signature(self.generate).parameters
        unknown = set(kwargs) - set(params)
        if unknown:
            raise ValueError(f"unknown argument(s) {sorted(unknown)} for {self.reader!r}; expected {sorted(params)}")
        values = {k: p.default for k, p in params.items() if k not in ("out", "workers", "overwrite")}
        values.update({k: v for k, v in kwargs.items() if k not in ("workers", "overwrite")})
        values["size"] = parse_size(values["size"])
        return json_arguments(**values)


SYNTHETIC_DATASETS: dict[str, SyntheticSpec] = {
    "synth-nyud": SyntheticSpec("synth-nyud", generate_synth_nyud),
    "synth-pascal": SyntheticSpec("synth-pascal", generate_synth_pascal),
}
"""Synthetic dataset name -> :class:`SyntheticSpec` (reader name and generate-once cache)."""
