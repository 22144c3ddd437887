"""Joint image + target transforms and the per-lineage presets (``spec/protocols.md`` §3).

Every transform is a small callable ``Sample -> Sample`` that handles each key of the sample contract
(:mod:`densemtl.data.base`) the right way, reading what a key is from :data:`densemtl.tasks.TASKS`:

==============================  ===============================  ==========================================
key                             resampling                       fill (padding, areas rotated in)
==============================  ===============================  ==========================================
``image``                       bilinear or bicubic (preset)     0 (after normalisation: 0 = the mean)
label maps (segmentation,       nearest                          255 (``IGNORE_INDEX``)
binary: semseg, human_parts,
edge, sal)
``depth``                       nearest; divided by the zoom     0 (invalid)
``normals``                     nearest (or bilinear, mtan)      zero vector (invalid); x negated on a
                                                                 flip, (x, y) rotated with the image
``meta``                        updated: ``valid_box``,          -
                                ``augment``
==============================  ===============================  ==========================================

Coordinates follow the camera convention of the normals: x to the right, y down, z along the optical axis.
A positive rotation angle turns the picture counter-clockwise as seen on screen; the (x, y) components of
the normals turn with it: ``x' = cos a x + sin a y``, ``y' = -sin a x + cos a y``.

**8-bit normals.** ``normals`` may also be a uint8 (3, H, W) tensor of PNG codes, n = 2v/255 - 1 (the
``nyud`` layout's encoding, :data:`NORMALS_PNG8_LUT`; readers give them on request, e.g.
``NYUD(normals_png8=True)``, which the DataModule uses for its loaders): resampled nearest and flipped
(v -> 255 - v, exactly -n) as codes, decoded where arithmetic is needed (bilinear, rotation, resize), and
decoded by :class:`ToContract`, which also sets them to the zero vector outside ``meta['valid_box']`` (the
padding; an 8-bit code cannot be zero).

``meta["size"]`` (set by the reader) keeps the original (H, W); every geometric transform keeps
``meta["valid_box"] = (top, left, height, width)``, the part of the output that holds image content. A
prediction is brought back to the original image with :func:`restore_predictions` (crop the valid box,
then resize to ``meta["size"]``: argmax + nearest for class logits, bilinear otherwise, as MTI-Net
scores), or, batched, with :func:`resize_back`.

**Random numbers.** Random transforms draw only from a ``torch.Generator``. :class:`Compose` draws one
64-bit seed per sample, from its own generator when :meth:`Compose.reseed` was called, else from torch's
global generator, and seeds a fresh generator with it for that sample. Torch's global generator is seeded
by ``seed_everything`` in the main process and, in each DataLoader worker, by PyTorch itself with
``base_seed + worker_id`` (``base_seed`` is drawn from the loader's or the main process's generator when
the iterator starts). :class:`~densemtl.data.datamodule.MultiTaskDataModule` reseeds its training
pipeline from its ``seed`` (or ``torch.initial_seed()``) and the distributed rank, and its
``worker_init_fn`` (:func:`~densemtl.data.datamodule.seed_worker`) reseeds each worker's copy from the
worker seed and the rank. Results are therefore reproducible under ``seed_everything`` (or ``seed``) and
differ across workers, ranks and epochs; they do depend on the number of workers.

**Speed.** Scale + crop computes only the cropped window, with one flat ``torch.gather`` per key (no
full-size resize); the InvPT flip is fused into the same gather; the HSV colour operations avoid
``torch.where``/``argmax`` (slow on CPU). The ``invpt`` preset defers its photometric distortion to
:class:`ToContract`, which the DataModule runs batched on the device. See ``benchmarks/bench_loading.py``.

**Presets** (:data:`PRESETS`, :func:`build_transform`): ``invpt`` (§3.1), ``mtinet`` (§3.2), ``mtan`` and
``autolambda`` (§3.3), ``ctal_cnn`` (§3.4) and ``none`` (normalisation only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from densemtl.registry import Registry
from densemtl.tasks import TASKS

__all__ = [
    "DEFAULT_SIZES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "NORMALS_PNG8_LUT",
    "PRESETS",
    "PRESET_NORMALIZATION",
    "CentredPad",
    "Compose",
    "Normalize",
    "PhotometricDistortion",
    "RandomAffine",
    "RandomCropResize",
    "RandomHorizontalFlip",
    "RandomScaleCrop",
    "Resize",
    "ToCompact",
    "ToContract",
    "Transform",
    "affine",
    "build_transform",
    "decode_normals_png8",
    "hflip",
    "photometric",
    "register_preset",
    "resize_back",
    "resolve_normalization",
    "restore_predictions",
    "split_contract",
]

Sample = dict[str, Any]
Size = tuple[int, int]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

NORMALIZATIONS: dict[str, tuple[tuple[float, ...] | None, tuple[float, ...] | None]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "unit": (None, None),
}
"""Named (mean, std) pairs on [0, 1] pixels: ``imagenet``; ``half`` (2x - 1: EfficientNet-Lite, Auto-λ);
``unit`` (no normalisation, pixels in [0, 1]: mtan, CTAL CNN)."""


NORMALS_PNG8_LUT: torch.Tensor = (2.0 * torch.arange(256, dtype=torch.float64) / 255.0 - 1.0).to(torch.float32)
"""float32 normal component of each 8-bit PNG code v: 2v/255 - 1 (computed in float64)."""


def decode_normals_png8(codes: torch.Tensor) -> torch.Tensor:
    """8-bit normal codes, uint8 (..., 3, H, W), to float32 components 2v/255 - 1; float input is returned as is."""
    if codes.dtype != torch.uint8:
        return codes
    return NORMALS_PNG8_LUT.to(codes.device)[codes.long()]


def _negate_x(normals: torch.Tensor) -> torch.Tensor:
    """Negate the x component of (3, H, W) normals in place (8-bit codes: v -> 255 - v, exactly -n)."""
    if normals.dtype == torch.uint8:
        normals[0].bitwise_not_()
    else:
        normals[0].neg_()
    return normals


# ---------------------------------------------------------------------------------------------- keys


def _kind(key: str) -> str:
    """What a sample key is: ``image``, ``meta``, ``label``, ``depth`` or ``normals``."""
    if key in ("image", "meta"):
        return key
    task = TASKS.get(key)
    if task is None:
        raise ValueError(f"unknown sample key {key!r}; expected 'image', 'meta' or a task in {sorted(TASKS)}")
    return "label" if task.is_label_map else task.kind


def _fill(key: str) -> float:
    """Value written where a key has no content (padding, areas rotated in from outside)."""
    return 0.0 if key == "image" else float(TASKS[key].ignore_value)


def _pair(size: Sequence[int] | int, what: str) -> Size:
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{what} must be two positive integers (height, width), got {size!r}")
    return size  # type: ignore[return-value]


def _spatial_size(sample: Sample) -> Size:
    """(H, W) shared by every tensor of a sample; a mismatch raises naming the keys."""
    if "image" not in sample:
        raise ValueError(f"sample has no 'image' key (keys: {sorted(sample)})")
    size = tuple(sample["image"].shape[-2:])
    for key, value in sample.items():
        if key != "meta" and tuple(value.shape[-2:]) != size:
            raise ValueError(f"sample key {key!r} has spatial size {tuple(value.shape[-2:])}, image has {size}")
    return size  # type: ignore[return-value]


def _meta(sample: Sample, size: Size) -> dict[str, Any]:
    """A copy of ``sample['meta']`` with ``size`` and ``valid_box`` filled in when missing."""
    meta = dict(sample.get("meta", {}))
    meta.setdefault("size", size)
    meta.setdefault("valid_box", (0, 0, size[0], size[1]))
    meta["augment"] = dict(meta.get("augment", {}))
    return meta


# --------------------------------------------------------------------------------------- random draws


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, n: int) -> int:
    """Uniform integer in [0, n)."""
    return int(torch.randint(n, (), generator=g)) if n > 1 else 0


def _coin(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def _draw_scale(
    g: torch.Generator, scale_range: tuple[float, float] | None, choices: tuple[float, ...] | None
) -> float:
    if choices:
        return choices[_randint(g, len(choices))]
    if scale_range is None:
        return 1.0
    return _uniform(g, *scale_range)


def _new_generator(source: torch.Generator | None = None) -> torch.Generator:
    """A generator seeded with a 63-bit seed drawn from ``source`` (torch's global generator if None)."""
    seed = int(torch.randint(2**62, (), generator=source))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


# ------------------------------------------------------------------------------------ resampling kernels


def _nearest_index(in_size: int, out_size: int, start: int, count: int, offset: int = 0) -> torch.Tensor:
    """Source rows of output rows ``start .. start+count`` of a nearest resize ``in_size -> out_size``.

    The same rule as ``F.interpolate(mode="nearest")`` and OpenCV's ``INTER_NEAREST``:
    ``min(floor(i * in / out), in - 1)`` in float32; ``offset`` is added to the result.
    """
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    idx = (torch.arange(start, start + count, dtype=torch.float32) * scale).floor().long().clamp_(max=in_size - 1)
    return idx + offset if offset else idx


def _linear_index(
    in_size: int, out_size: int, start: int, count: int, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i0, i1, w1) of output rows ``start .. start+count`` of a bilinear resize ``in_size -> out_size``.

    ``align_corners=False`` (half-pixel centres, source clamped at 0), as ``F.interpolate`` and OpenCV.
    """
    scale = in_size / out_size
    src = ((torch.arange(start, start + count, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0.0)
    i0 = src.floor().long().clamp_(max=in_size - 1)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    w1 = (src - i0).clamp_(0.0, 1.0)
    return i0 + offset, i1 + offset, w1


def _flat_index(rows: torch.Tensor, cols: torch.Tensor, width: int) -> torch.Tensor:
    """Indices into a flattened (H * W) plane of the pixels (rows x cols), as a 1-D int64 tensor."""
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def _take(x: torch.Tensor, flat: torch.Tensor, size: Size) -> torch.Tensor:
    """Pixels ``flat`` (from :func:`_flat_index`) of a (..., H, W) tensor, reshaped to (..., *size).

    One ``torch.gather`` over the flattened planes: several times faster on CPU than a row
    ``index_select`` followed by a column gather, and than advanced indexing.
    """
    planes = x.reshape(*x.shape[:-2], -1)
    return torch.gather(planes, -1, flat.expand(*planes.shape[:-1], flat.numel())).reshape(*x.shape[:-2], *size)


def _gather_nearest(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x[..., rows, :][..., cols]`` for a (..., H, W) tensor of any dtype."""
    return _take(x, _flat_index(rows, cols, x.shape[-1]), (rows.numel(), cols.numel()))


def _gather_linear(
    x: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Separable bilinear sampling of a (..., H, W) tensor at precomputed rows and columns; float32 out."""
    i0, i1, wy = rows
    j0, j1, wx = cols
    top, bottom = x.index_select(-2, i0), x.index_select(-2, i1)
    if not x.is_floating_point():
        top, bottom = top.float(), bottom.float()
    x = torch.lerp(top, bottom, wy[:, None])
    lines = torch.arange(i0.numel())
    size = (i0.numel(), j0.numel())
    width = x.shape[-1]
    return torch.lerp(_take(x, _flat_index(lines, j0, width), size), _take(x, _flat_index(lines, j1, width), size), wx)


def _resize_uint8(x: torch.Tensor, size: Size) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``, no antialiasing) of a uint8 (C, H, W) tensor, in uint8."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]


def _vector_length(normals: torch.Tensor) -> torch.Tensor:
    """Euclidean length over the 3 channels of (..., 3, H, W) vectors, as (..., 1, H, W).

    Written out per channel: on CPU ``Tensor.norm`` over a small channel dimension is 14-65x slower.
    """
    x, y, z = normals.narrow(-3, 0, 1), normals.narrow(-3, 1, 1), normals.narrow(-3, 2, 1)
    return torch.sqrt(x * x + y * y + z * z)


def _renormalize(normals: torch.Tensor) -> torch.Tensor:
    """Scale (..., 3, H, W) vectors to unit length; vectors shorter than 1e-6 become zero."""
    norm = _vector_length(normals)
    return torch.where(norm > 1e-6, normals / norm.clamp_min(1e-6), torch.zeros_like(normals))


def _interpolate(x: torch.Tensor, size: Size, mode: str) -> torch.Tensor:
    """Resize a (C, H, W) tensor with ``F.interpolate`` (``align_corners=False``); float32 out."""
    return F.interpolate(x[None].float(), size=size, mode=mode, align_corners=False)[0]


# ------------------------------------------------------------------------------------------- base


class Transform:
    """Base class: a callable ``Sample -> Sample`` that never modifies its input.

    Random transforms set ``random = True`` and draw from the ``generator`` passed to ``__call__``
    (a fresh generator seeded from torch's global one when None).
    """

    random: ClassVar[bool] = False
    _fields: ClassVar[tuple[str, ...]] = ()

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if generator is None and self.random:
            generator = _new_generator()
        return self.apply(sample, generator)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, all drawing from one per-sample generator.

    Args:
        transforms: the transforms, applied first to last.
    """

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        self.transforms = list(transforms)
        self.generator: torch.Generator | None = None

    @property
    def random(self) -> bool:  # type: ignore[override]
        return any(getattr(t, "random", False) for t in self.transforms)

    def reseed(self, seed: int | None) -> None:
        """Draw per-sample seeds from a private generator seeded with ``seed`` (None: torch's global one)."""
        if seed is None:
            self.generator = None
            return
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed) % 2**63)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if generator is None and self.random:
            generator = _new_generator(self.generator)
        return self.apply(sample, generator)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        for t in self.transforms:
            sample = t(sample, generator) if isinstance(t, Transform) else t(sample)
        return sample

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


# -------------------------------------------------------------------------------------- geometric


class RandomScaleCrop(Transform):
    """Random zoom, then a random crop of at most ``size`` (ATRC/InvPT §3.1 steps 1-2; Auto-λ §3.3).

    The factor s is drawn from ``scale_range`` (uniform) or ``scale_choices``. The image is resized to
    (round(H s), round(W s)) and a window of min(that, ``size``) is cropped at a uniform offset. Only the
    cropped window is computed (same numbers as resizing the whole image and cropping). Depth is divided
    by s. With ``semseg`` present and ``cat_max_ratio < 1``, up to ``attempts`` windows are drawn until
    one has at least two classes and no class above ``cat_max_ratio`` of its valid pixels (else the last
    one drawn is kept). The result may be smaller than ``size``; pad it afterwards (:class:`CentredPad`).

    Args:
        size: crop (height, width), pixels.
        scale_range: (low, high) of a uniform zoom factor; used when ``scale_choices`` is empty.
        scale_choices: discrete zoom factors drawn with equal probability.
        cat_max_ratio: largest allowed share of one semseg class in the crop; 1 disables the check.
        attempts: windows drawn at most for the ``cat_max_ratio`` check.
        image_mode: ``bilinear`` (the image) or ``nearest``.
        normals_mode: ``nearest`` (ATRC/InvPT, Auto-λ) or ``bilinear``.
        flip: probability of mirroring the crop left-right (normals x negated), drawn after the window:
            the same result as a following :class:`RandomHorizontalFlip` with the same generator, without
            the extra pass over every tensor.
        uint8_image: resample a uint8 image bilinearly in uint8 (torch's fixed-point kernel: within 1 of
            the float result, as OpenCV's uint8 resize of the reference) and keep it uint8. The whole
            image is resized, then cropped; still several times faster than the float window.
    """

    random = True
    _fields = (
        "size",
        "scale_range",
        "scale_choices",
        "cat_max_ratio",
        "attempts",
        "image_mode",
        "normals_mode",
        "flip",
        "uint8_image",
    )

    def __init__(
        self,
        size: Sequence[int] | int,
        scale_range: tuple[float, float] | None = (0.5, 2.0),
        scale_choices: Sequence[float] | None = None,
        cat_max_ratio: float = 0.75,
        attempts: int = 10,
        image_mode: str = "bilinear",
        normals_mode: str = "nearest",
        flip: float = 0.0,
        uint8_image: bool = False,
    ) -> None:
        self.size = _pair(size, "crop size")
        self.uint8_image = bool(uint8_image)
        if not 0 <= flip <= 1:
            raise ValueError(f"flip probability must be in [0, 1], got {flip}")
        self.flip = float(flip)
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.scale_choices = tuple(float(s) for s in scale_choices) if scale_choices else None
        if self.scale_range is None and self.scale_choices is None:
            raise ValueError("RandomScaleCrop needs scale_range or scale_choices")
        for s in self.scale_choices or self.scale_range or ():
            if s <= 0:
                raise ValueError(f"zoom factors must be positive, got {s}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        _check_mode(image_mode, ("bilinear", "nearest"), "image_mode")
        _check_mode(normals_mode, ("bilinear", "nearest"), "normals_mode")
        self.cat_max_ratio = float(cat_max_ratio)
        self.attempts = int(attempts)
        self.image_mode = image_mode
        self.normals_mode = normals_mode

    def _window(self, g: torch.Generator, scaled: Size) -> tuple[int, int, int, int]:
        ch, cw = min(scaled[0], self.size[0]), min(scaled[1], self.size[1])
        return _randint(g, scaled[0] - ch + 1), _randint(g, scaled[1] - cw + 1), ch, cw

    def _balanced(self, semseg: torch.Tensor) -> bool:
        """True when the crop has >= 2 classes and none above ``cat_max_ratio`` of the valid pixels."""
        counts = torch.bincount(semseg.reshape(-1), minlength=256)[: int(TASKS["semseg"].ignore_value)]
        present = counts[counts > 0]
        return present.numel() > 1 and float(present.max()) / float(present.sum()) < self.cat_max_ratio

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        g = generator if generator is not None else _new_generator()
        H, W = _spatial_size(sample)
        s = _draw_scale(g, self.scale_range, self.scale_choices)
        Hs, Ws = max(1, int(H * s + 0.5)), max(1, int(W * s + 0.5))
        check = "semseg" in sample and self.cat_max_ratio < 1
        cached = None
        for _ in range(self.attempts if check else 1):
            top, left, ch, cw = self._window(g, (Hs, Ws))
            rows, cols = _nearest_index(H, Hs, top, ch), _nearest_index(W, Ws, left, cw)
            flat = _flat_index(rows, cols, W)
            if not check:
                break
            cached = _take(sample["semseg"], flat, (ch, cw))
            if self._balanced(cached):
                break
        flip = self.flip > 0 and _coin(g, self.flip)
        if flip:  # mirror the window: reversed output columns; the check above is mirror-invariant
            cols, cached = cols.flip(0), cached.flip(-1) if cached is not None else None
            flat = _flat_index(rows, cols, W)
        lin_rows = lin_cols = None
        out: Sample = {}
        for key, value in sample.items():
            kind = _kind(key)
            if kind == "meta":
                continue
            linear = (kind == "image" and self.image_mode == "bilinear") or (
                kind == "normals" and self.normals_mode == "bilinear"
            )
            if kind == "normals" and linear:
                value = decode_normals_png8(value)
            if linear and kind == "image" and self.uint8_image and value.dtype == torch.uint8:
                y = _resize_uint8(value, (Hs, Ws))[..., top : top + ch, left : left + cw]
                y = y.flip(-1) if flip else y.contiguous()
            elif linear:
                if lin_rows is None:
                    lin_rows, lin_cols = _linear_index(H, Hs, top, ch), _linear_index(W, Ws, left, cw)
                    if flip:
                        lin_cols = tuple(c.flip(0) for c in lin_cols)
                y = _gather_linear(value, lin_rows, lin_cols)
            elif key == "semseg" and cached is not None:
                y = cached
            else:
                y = _take(value, flat, (ch, cw))
            if kind == "depth":
                y = y.div_(s) if y.is_floating_point() else y / s
            elif kind == "normals" and flip:
                _negate_x(y)
            out[key] = y
        meta = _meta(sample, (H, W))
        meta["valid_box"] = (0, 0, ch, cw)
        meta["augment"]["scale"] = s
        meta["augment"]["crop"] = (top, left, ch, cw)
        if flip:
            meta["augment"]["flip"] = not meta["augment"].get("flip", False)
        out["meta"] = meta
        return out


class RandomCropResize(Transform):
    """mtan's optional augmentation (§3.3): crop (H/s, W/s) at random, resize it back to (H, W).

    s is drawn from ``scale_choices``; the image and normals are resized bilinearly (normals not
    re-normalised, as mtan), labels and depth nearest; depth is divided by s.

    Args:
        scale_choices: zoom factors (>= 1) drawn with equal probability.
        image_mode: ``bilinear`` or ``nearest``.
        normals_mode: ``bilinear`` (mtan) or ``nearest``.
    """

    random = True
    _fields = ("scale_choices", "image_mode", "normals_mode")

    def __init__(
        self,
        scale_choices: Sequence[float] = (1.0, 1.2, 1.5),
        image_mode: str = "bilinear",
        normals_mode: str = "bilinear",
    ) -> None:
        self.scale_choices = tuple(float(s) for s in scale_choices)
        if not self.scale_choices or min(self.scale_choices) < 1:
            raise ValueError(f"scale_choices must be non-empty factors >= 1, got {scale_choices!r}")
        _check_mode(image_mode, ("bilinear", "nearest"), "image_mode")
        _check_mode(normals_mode, ("bilinear", "nearest"), "normals_mode")
        self.image_mode = image_mode
        self.normals_mode = normals_mode

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        g = generator if generator is not None else _new_generator()
        H, W = _spatial_size(sample)
        s = _draw_scale(g, None, self.scale_choices)
        h, w = max(1, int(H / s)), max(1, int(W / s))
        top, left = _randint(g, H - h + 1), _randint(g, W - w + 1)
        rows, cols = _nearest_index(h, H, 0, H, top), _nearest_index(w, W, 0, W, left)
        lin = (_linear_index(h, H, 0, H, top), _linear_index(w, W, 0, W, left))
        out: Sample = {}
        for key, value in sample.items():
            kind = _kind(key)
            if kind == "meta":
                continue
            mode = self.image_mode if kind == "image" else self.normals_mode if kind == "normals" else "nearest"
            if kind == "normals" and mode == "bilinear":
                value = decode_normals_png8(value)
            y = _gather_linear(value, *lin) if mode == "bilinear" else _gather_nearest(value, rows, cols)
            out[key] = y / s if kind == "depth" else y
        meta = _meta(sample, (H, W))
        meta["augment"]["scale"] = s
        meta["augment"]["crop"] = (top, left, h, w)
        out["meta"] = meta
        return out


class RandomHorizontalFlip(Transform):
    """Mirror left-right with probability ``p``; the normals' x component is negated.

    Args:
        p: flip probability.
    """

    random = True
    _fields = ("p",)

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = float(p)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        g = generator if generator is not None else _new_generator()
        if not _coin(g, self.p):
            return sample
        return hflip(sample)


def hflip(sample: Sample) -> Sample:
    """Mirror a sample left-right (normals x negated, ``valid_box`` mirrored)."""
    H, W = _spatial_size(sample)
    out: Sample = {}
    for key, value in sample.items():
        kind = _kind(key)
        if kind == "meta":
            continue
        y = value.flip(-1)
        if kind == "normals":
            _negate_x(y)
        out[key] = y
    meta = _meta(sample, (H, W))
    top, left, h, w = meta["valid_box"]
    meta["valid_box"] = (top, W - left - w, h, w)
    meta["augment"]["flip"] = not meta["augment"].get("flip", False)
    out["meta"] = meta
    return out


def _rotate_normals(normals: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Turn the (x, y) components of (3, H, W) normals by ``angle_deg`` counter-clockwise on screen."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    x, y = normals[0], normals[1]
    return torch.stack((c * x + s * y, -s * x + c * y, normals[2]))


def _affine_grid(size: Size, angle_deg: float, scale: float) -> torch.Tensor:
    """``grid_sample`` grid (1, H, W, 2) of a zoom by ``scale`` and a CCW rotation about the image centre."""
    H, W = size
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    cy, cx = (H - 1) / 2, (W - 1) / 2
    y = torch.arange(H, dtype=torch.float32)[:, None] - cy
    x = torch.arange(W, dtype=torch.float32)[None, :] - cx
    x_in = (c * x - s * y) / scale + cx
    y_in = (s * x + c * y) / scale + cy
    return torch.stack(((2 * x_in + 1) / W - 1, (2 * y_in + 1) / H - 1), dim=-1)[None]


def _warp(x: torch.Tensor, grid: torch.Tensor, mode: str, fill: float) -> torch.Tensor:
    """Sample a (C, H, W) or (H, W) tensor at ``grid``; points outside get ``fill``; integer dtypes are kept."""
    v = x.reshape(1, -1, *x.shape[-2:]).float()
    if fill != 0:
        v = v - fill
    y = F.grid_sample(v, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if fill != 0:
        y = y + fill
    y = y.reshape(*x.shape[:-2], *y.shape[-2:])
    return y.round().to(x.dtype) if not x.is_floating_point() else y


class RandomAffine(Transform):
    """MTI-Net's ScaleNRotate (§3.2): zoom and rotate about the centre, output the same size.

    The angle (degrees, counter-clockwise positive) is uniform in ``angle_range``; the zoom is uniform in
    ``scale_range`` or drawn from ``scale_choices``. Image: ``image_mode`` (bicubic, clamped to
    [0, 255]); every target nearest; depth divided by the zoom; normals rotated with the image and
    re-normalised; areas rotated in from outside get the fill of each key (image 0, labels 255, depth 0,
    normals zero).

    Args:
        angle_range: (low, high) degrees, or None for no rotation.
        scale_range: (low, high) zoom, used when ``scale_choices`` is empty.
        scale_choices: discrete zoom factors.
        image_mode: ``bicubic``, ``bilinear`` or ``nearest``.
    """

    random = True
    _fields = ("angle_range", "scale_range", "scale_choices", "image_mode")

    def __init__(
        self,
        angle_range: tuple[float, float] | None = (-20.0, 20.0),
        scale_range: tuple[float, float] | None = (0.75, 1.25),
        scale_choices: Sequence[float] | None = None,
        image_mode: str = "bicubic",
    ) -> None:
        self.angle_range = tuple(angle_range) if angle_range is not None else None
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.scale_choices = tuple(float(s) for s in scale_choices) if scale_choices else None
        for s in self.scale_choices or self.scale_range or ():
            if s <= 0:
                raise ValueError(f"zoom factors must be positive, got {s}")
        _check_mode(image_mode, ("bicubic", "bilinear", "nearest"), "image_mode")
        self.image_mode = image_mode

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        g = generator if generator is not None else _new_generator()
        angle = _uniform(g, *self.angle_range) if self.angle_range is not None else 0.0
        scale = _draw_scale(g, self.scale_range, self.scale_choices)
        return affine(sample, angle, scale, self.image_mode)


def affine(sample: Sample, angle: float, scale: float, image_mode: str = "bicubic") -> Sample:
    """Zoom by ``scale`` and rotate by ``angle`` degrees (CCW on screen) about the centre; same size out.

    See :class:`RandomAffine` for the handling of each key.
    """
    H, W = _spatial_size(sample)
    meta = _meta(sample, (H, W))
    meta["augment"]["angle"] = angle
    meta["augment"]["scale"] = scale * meta["augment"].get("scale", 1.0)
    if angle == 0 and scale == 1:
        return {**sample, "meta": meta}
    # a zoom without rotation is separable: the grid is built from its two axes, and nearest keys are
    # gathered at the rows and columns grid_sample picks (:func:`_zoom_axis`), with the same values as
    # sampling the whole grid
    if angle == 0:
        (x_coord, cols), (y_coord, rows) = _zoom_axis(W, scale), _zoom_axis(H, scale)
        grid = torch.stack((x_coord.expand(H, W), y_coord[:, None].expand(H, W)), dim=-1)[None]
        flat = _flat_index(rows.clamp(min=0), cols.clamp(min=0), W)
        outside = (rows < 0)[:, None] | (cols < 0)[None, :]
        outside = outside if bool(outside.any()) else None
    else:
        grid = _affine_grid((H, W), angle, scale)
    out: Sample = {}
    for key, value in sample.items():
        kind = _kind(key)
        if kind == "meta":
            continue
        if kind == "image":
            out[key] = _warp(value.float(), grid, image_mode, 0.0).clamp_(0, 255)
            continue
        if kind == "normals":
            value = decode_normals_png8(value)
        fill = 0.0 if kind == "normals" else _fill(key)
        if angle == 0:
            y = _take(value, flat, (H, W))
            y = y.masked_fill_(outside, fill) if outside is not None else y
        else:
            y = _warp(value, grid, "nearest", fill)
        if kind == "depth":
            y = y / scale
        elif kind == "normals":
            y = _renormalize(_rotate_normals(y, angle) if angle != 0 else y)
        out[key] = y
    out["meta"] = meta
    return out


def _zoom_axis(n: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis (length ``n``) of a zoom by ``scale`` about the centre, without rotation.

    Returns:
        The ``grid_sample`` coordinates (n,) float32, computed exactly as :func:`_affine_grid` computes
        them at angle 0, and the source index (n,) int64 that ``grid_sample(mode="nearest")`` picks for
        them (-1 outside): ``grid_sample`` itself rounds them, sampling a row of indices 1..n with zero
        padding.
    """
    c = (n - 1) / 2
    coord = (2 * (((torch.arange(n, dtype=torch.float32) - c) / scale) + c) + 1) / n - 1
    grid = torch.stack((coord, torch.zeros_like(coord)), dim=-1).reshape(1, 1, n, 2)
    ids = torch.arange(1, n + 1, dtype=torch.float32).reshape(1, 1, 1, n)
    picked = F.grid_sample(ids, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return coord, picked.reshape(n).long() - 1


class Resize(Transform):
    """Fixed resize to ``size`` (MTI-Net's FixedResize, §3.2); aspect ratio not preserved, depth unchanged.

    Args:
        size: output (height, width).
        image_mode: ``bicubic`` (MTI-Net), ``bilinear`` or ``nearest``.
        normals_mode: ``nearest`` (MTI-Net) or ``bilinear``.
        renormalize_normals: rescale normals to unit length after resizing (zero stays zero).
    """

    _fields = ("size", "image_mode", "normals_mode", "renormalize_normals")

    def __init__(
        self,
        size: Sequence[int] | int,
        image_mode: str = "bicubic",
        normals_mode: str = "nearest",
        renormalize_normals: bool = True,
    ) -> None:
        self.size = _pair(size, "resize size")
        _check_mode(image_mode, ("bicubic", "bilinear", "nearest"), "image_mode")
        _check_mode(normals_mode, ("bilinear", "nearest"), "normals_mode")
        self.image_mode = image_mode
        self.normals_mode = normals_mode
        self.renormalize_normals = bool(renormalize_normals)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        H, W = _spatial_size(sample)
        meta = _meta(sample, (H, W))
        meta["valid_box"] = (0, 0, *self.size)
        if self.size == (H, W):
            return {**sample, "meta": meta}
        rows, cols = _nearest_index(H, self.size[0], 0, self.size[0]), _nearest_index(W, self.size[1], 0, self.size[1])
        out: Sample = {}
        for key, value in sample.items():
            kind = _kind(key)
            if kind == "meta":
                continue
            mode = self.image_mode if kind == "image" else self.normals_mode if kind == "normals" else "nearest"
            if kind == "normals":
                value = decode_normals_png8(value)
            if mode == "nearest":
                y = _gather_nearest(value, rows, cols)
            else:
                y = _interpolate(value, self.size, mode)
                if kind == "image":
                    y = y.clamp_(0, 255)
            if kind == "normals" and self.renormalize_normals:
                y = _renormalize(y)
            out[key] = y
        out["meta"] = meta
        return out


class CentredPad(Transform):
    """Pad every key to ``size``, centred, with its fill (image 0, labels 255, depth 0, normals zero).

    ``meta["valid_box"]`` is shifted by the offsets so predictions can be cropped back.

    Args:
        size: output (height, width).
        protocol: named in the error raised for a sample larger than ``size`` (padding never shrinks).
    """

    _fields = ("size", "protocol")

    def __init__(self, size: Sequence[int] | int, protocol: str = "invpt") -> None:
        self.size = _pair(size, "pad size")
        self.protocol = protocol

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        H, W = _spatial_size(sample)
        th, tw = self.size
        if th < H or tw < W:
            name = sample.get("meta", {}).get("name", "?")
            raise ValueError(
                f"sample {name!r} is {H}x{W}, larger than the pad size {th}x{tw}: the {self.protocol} pad-only "
                f"protocol never resizes (spec/protocols.md §2.2, §3.1), so such images cannot be batched. Use "
                f"the layout the protocol expects (NYUD-v2 'nyud' at 425x560, PASCAL-Context <= 512x512), a "
                f"larger size, or a preset that resizes ('mtinet')."
            )
        top, left = (th - H) // 2, (tw - W) // 2
        meta = _meta(sample, (H, W))
        b_top, b_left, bh, bw = meta["valid_box"]
        meta["valid_box"] = (b_top + top, b_left + left, bh, bw)
        meta["augment"]["pad"] = (top, left)
        if (th, tw) == (H, W):
            return {**sample, "meta": meta}
        out: Sample = {}
        for key, value in sample.items():
            if _kind(key) == "meta":
                continue
            y = value.new_full((*value.shape[:-2], th, tw), _fill(key))
            y[..., top : top + H, left : left + W] = value
            out[key] = y
        out["meta"] = meta
        return out


# ------------------------------------------------------------------------------------ photometric


def _clamp255(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_(0.0, 255.0)


def photometric(
    image: torch.Tensor,
    brightness: float | None = None,
    contrast: float | None = None,
    saturation: float | None = None,
    hue: float | None = None,
    contrast_first: bool = False,
) -> torch.Tensor:
    """The deterministic part of :class:`PhotometricDistortion` on a (3, H, W) RGB image in [0, 255].

    Order: brightness; contrast if ``contrast_first``; saturation and hue (HSV); contrast otherwise.
    Each step clamps to [0, 255]; None skips a step.

    Args:
        image: (3, H, W), uint8 or float in [0, 255].
        brightness: added to every channel (pixel units).
        contrast: factor multiplying every channel.
        saturation: factor multiplying the HSV saturation (clamped to 1).
        hue: shift of the HSV hue on OpenCV's 0-180 scale (180 = the full circle, so 1 = 2 degrees).
        contrast_first: apply contrast before the colour operations.

    Returns:
        float32 (3, H, W) in [0, 255].
    """
    x = image.float() if image.dtype != torch.float32 else image.clone()
    if brightness is not None:
        x = _clamp255(x.add_(brightness))
    if contrast is not None and contrast_first:
        x = _clamp255(x.mul_(contrast))
    if saturation is not None or hue is not None:
        x = _saturation_hue(x, saturation, hue)
    if contrast is not None and not contrast_first:
        x = _clamp255(x.mul_(contrast))
    return x


_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def _saturation_hue(x: torch.Tensor, saturation: float | None, hue: float | None) -> torch.Tensor:
    """Scale the HSV saturation and rotate the hue of a float (3, H, W) image in [0, 255], V unchanged.

    With V = max, d = V - min = V S: scaling S by a gives d' = min(a d, V), and a channel c becomes
    ``V - d'/d (V - c)``. A hue rotation uses the standard HSV -> RGB form
    ``c_n = V - d' clamp(2 - |k - 2|, 0, 1)``, ``k = (n + H / 60) mod 6``, n = 5, 3, 1 for R, G, B, where
    H / 60 = (g - b) / d, (b - r) / d + 2 or (r - g) / d + 4 when R, G or B is the maximum (first wins).
    Written with gathers and masks rather than ``torch.where``/``argmax``, which are slow on CPU.
    """
    mx = x.amax(0)
    d = mx - x.amin(0)
    d_new = torch.minimum(d * saturation, mx) if saturation is not None else d
    if hue is None:
        factor = d_new / d.clamp_min(1e-6)
        return torch.addcmul(mx, factor, x - mx)
    r, g, b = x
    channel = (r != mx).to(torch.int64) * ((g != mx).to(torch.int64) + 1)  # index of the (first) maximum
    diff = torch.stack((g - b, b - r, r - g))
    h6 = torch.gather(diff, 0, channel[None]).div_(d.clamp_min(1e-6)).add_(channel.to(torch.float32).mul_(2.0))
    k = h6 + (_HUE_OFFSETS + hue / 30.0)  # hue / 30 = the shift in units of 60 degrees
    k.sub_(torch.floor(k * (1.0 / 6.0)).mul_(6.0))  # mod 6
    weight = k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)  # clamp(min(k, 4 - k), 0, 1)
    return mx - weight.mul_(d_new)


class PhotometricDistortion(Transform):
    """ATRC/InvPT photometric distortion (§3.1 step 4), on the image only; each part with probability ``p``.

    Brightness + U(-b, b); contrast x U(c0, c1), randomly before or after the colour operations;
    saturation x U(s0, s1); hue + U(-h, h) on OpenCV's 0-180 scale. Computed in float32 (the reference
    rounds to uint8 between steps and draws integer hue shifts). Targets are untouched. The drawn values
    are recorded in ``meta["augment"]["photometric"]`` (keyword arguments of :func:`photometric`).

    With ``defer=True`` the values are only drawn and recorded, with ``meta["augment"]["photometric_pending"]
    = True``, and the image is left as it is: :class:`ToContract` applies them (inside ``meta["valid_box"]``,
    rounded to integers as :class:`ToCompact` would), so a DataLoader worker hands on the uint8 image and
    the distortion runs batched on the accelerator (``on_after_batch_transfer``). For a uint8 image (as in
    the ``invpt`` preset) the numbers are those of distorting at once followed by :class:`ToCompact`; a
    float image is rounded by :class:`ToCompact` before the deferred distortion instead of after it.

    Args:
        brightness: largest brightness shift, pixel units.
        contrast: (low, high) contrast factor.
        saturation: (low, high) saturation factor.
        hue: largest hue shift on the 0-180 scale.
        p: probability of each part.
        defer: draw now, apply in :class:`ToContract`.
    """

    random = True
    _fields = ("brightness", "contrast", "saturation", "hue", "p", "defer")

    def __init__(
        self,
        brightness: float = 32.0,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue: float = 18.0,
        p: float = 0.5,
        defer: bool = False,
    ) -> None:
        self.brightness = float(brightness)
        self.contrast = tuple(contrast)
        self.saturation = tuple(saturation)
        self.hue = float(hue)
        self.p = float(p)
        self.defer = bool(defer)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        g = generator if generator is not None else _new_generator()
        b = _uniform(g, -self.brightness, self.brightness) if _coin(g, self.p) else None
        contrast_first = _coin(g, 0.5)
        c = _uniform(g, *self.contrast) if _coin(g, self.p) else None
        s = _uniform(g, *self.saturation) if _coin(g, self.p) else None
        h = _uniform(g, -self.hue, self.hue) if _coin(g, self.p) else None
        params = {"brightness": b, "contrast": c, "saturation": s, "hue": h, "contrast_first": contrast_first}
        out = dict(sample)
        out["meta"] = meta = _meta(sample, _spatial_size(sample))
        meta["augment"]["photometric"] = params
        if self.defer:
            meta["augment"]["photometric_pending"] = True
        else:
            out["image"] = photometric(sample["image"], **params)
        return out


def _apply_pending_photometric(sample: Sample, batched: bool) -> Sample:
    """Apply the distortions that :class:`PhotometricDistortion` deferred, inside each valid box, rounded
    to integers in [0, 255]; the image becomes float32 when one is pending. Clears the pending flags."""
    metas = _metas(sample, batched)
    pending = [bool(m) and m.get("augment", {}).get("photometric_pending", False) for m in metas]
    if not any(pending):
        return sample
    out = dict(sample)
    image = sample["image"].float() if sample["image"].dtype != torch.float32 else sample["image"].clone()
    planes = image if batched else image[None]
    if len(metas) != planes.shape[0]:
        raise ValueError(f"{planes.shape[0]} samples but {len(metas)} meta entries")
    for i, (plane, meta) in enumerate(zip(planes, metas)):
        if not pending[i]:
            continue
        top, left, h, w = meta.get("valid_box", (0, 0, *plane.shape[-2:]))
        region = plane[:, top : top + h, left : left + w]
        region.copy_(photometric(region.contiguous(), **meta["augment"]["photometric"]).round_().clamp_(0.0, 255.0))
        metas[i] = {**meta, "augment": {**meta["augment"], "photometric_pending": False}}
    out["image"] = image
    out["meta"] = metas if batched else metas[0]
    return out


class Normalize(Transform):
    """Image to float32 ``(x / 255 - mean) / std`` per channel; mean and std on [0, 1] pixels.

    Args:
        mean: per-channel mean (RGB), or None for no centring (pixels in [0, 1]).
        std: per-channel std, or None for unit std.
    """

    _fields = ("mean", "std")

    def __init__(
        self, mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD
    ) -> None:
        self.mean = tuple(float(m) for m in mean) if mean is not None else None
        self.std = tuple(float(s) for s in std) if std is not None else None
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        mean_t = torch.tensor(self.mean if self.mean is not None else (0.0, 0.0, 0.0))
        std_t = torch.tensor(self.std if self.std is not None else (1.0, 1.0, 1.0))
        self._scale = (1.0 / (255.0 * std_t)).view(3, 1, 1)
        self._shift = (-mean_t / std_t).view(3, 1, 1)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        out = dict(sample)
        out["image"] = torch.addcmul(self._shift, sample["image"].float(), self._scale)
        return out


# ------------------------------------------------------------------------------------ compact encoding


class ToCompact(Transform):
    """Compact encoding of a transformed sample for the trip from a DataLoader worker to the device.

    The dtype of every key depends on the reader and on this step's settings only, never on a random
    draw, so that the samples of a batch always stack: a zoom of 1 that leaves the image uint8 while other
    zooms make it float must not reach the collate function. A preset picks the modes its steps allow:

    - ``image="round"``: uint8; a float image in [0, 255] is rounded half to even (as OpenCV's saturating
      cast: the reference pipelines hold uint8 images between steps);
    - ``image="float"``: float32 (a uint8 image converted exactly), for pipelines that keep bicubic floats
      on some draws only;
    - ``image="keep"``: as it comes, for pipelines whose every step keeps the reader's dtype;
    - ``normals="float"``: float32 (8-bit codes decoded by :func:`decode_normals_png8`, the zero vector
      outside ``meta['valid_box']``, as :class:`ToContract` would);
    - ``normals="keep"``: as they come (codes stay codes), for pipelines whose every step keeps them;
    - label maps (segmentation and binary tasks: values 0..254, 255 ignore) become uint8; depth is kept.

    :class:`ToContract` turns the result, one sample or a collated batch, into the sample contract. For a
    448x576 NYUD sample about 5 MB instead of 10 MB cross the worker's shared memory.

    Args:
        image: ``round`` (default), ``float`` or ``keep``.
        normals: ``keep`` (default) or ``float``.
    """

    _fields = ("image", "normals")

    def __init__(self, image: str = "round", normals: str = "keep") -> None:
        _check_mode(image, ("round", "float", "keep"), "ToCompact image")
        _check_mode(normals, ("keep", "float"), "ToCompact normals")
        self.image = image
        self.normals = normals

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        out = dict(sample)
        for key, value in sample.items():
            kind = _kind(key)
            if kind == "image":
                if self.image == "float":
                    out[key] = value.float()
                elif self.image == "round" and value.is_floating_point():
                    out[key] = value.round().clamp_(0.0, 255.0).to(torch.uint8)
            elif kind == "label" and value.dtype != torch.uint8:
                if value.numel():
                    lo, hi = torch.aminmax(value)
                    if lo < 0 or hi > 255:
                        name = sample.get("meta", {}).get("name", "?")
                        raise ValueError(
                            f"sample {name!r}: {key} values must lie in 0..255 (255 = ignore), got {lo}..{hi}"
                        )
                out[key] = value.to(torch.uint8)
            elif kind == "normals" and self.normals == "float" and value.dtype == torch.uint8:
                out[key] = _zero_outside(decode_normals_png8(value), _valid_boxes(sample, batched=False))
        return out


class ToContract(Transform):
    """The sample contract from :class:`ToCompact`'s encoding, for one sample or a collated batch.

    First a photometric distortion that :class:`PhotometricDistortion` deferred (``defer=True``) is
    applied. ``image`` -> float32 ``(x / 255 - mean) / std`` (the formula of :class:`Normalize`); with
    ``zero_padding`` the pixels outside ``meta['valid_box']`` are set to exactly 0 (ATRC/InvPT pad after
    normalising). Label maps -> their task's dtype (int64 for segmentation, float32 for binary tasks);
    8-bit normal codes -> float32 (:func:`decode_normals_png8`), the zero vector outside
    ``meta['valid_box']``; float normals and depth pass through. Works on any device: a preset applies it
    last, so ``dataset[i]`` is the contract, and :class:`~densemtl.data.datamodule.MultiTaskDataModule`
    moves it to ``on_after_batch_transfer`` (see :func:`split_contract`), so both give the same numbers.

    Args:
        mean: per-channel mean on [0, 1] pixels (RGB), or None for no centring.
        std: per-channel std on [0, 1] pixels, or None for unit std.
        zero_padding: set the image outside ``meta['valid_box']`` to 0 after normalising.
    """

    _fields = ("mean", "std", "zero_padding")

    def __init__(
        self,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        zero_padding: bool = False,
    ) -> None:
        self._normalize = Normalize(mean, std)
        self.mean, self.std = self._normalize.mean, self._normalize.std
        self.zero_padding = bool(zero_padding)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _scale_shift(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            self._constants[device] = (self._normalize._scale.to(device), self._normalize._shift.to(device))
        return self._constants[device]

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        """One sample ((3, H, W) image, ``meta`` a dict) or a batch ((B, 3, H, W), ``meta`` a list of dicts)."""
        sample = _apply_pending_photometric(sample, batched=sample["image"].dim() == 4)
        out = dict(sample)
        image = sample["image"]
        scale, shift = self._scale_shift(image.device)
        out["image"] = torch.addcmul(shift, image.float(), scale)
        boxes = _valid_boxes(sample, batched=image.dim() == 4)
        if self.zero_padding:
            _zero_outside(out["image"], boxes)
        for key, value in sample.items():
            if key in ("image", "meta"):
                continue
            kind = _kind(key)
            if kind == "label":
                out[key] = value.to(TASKS[key].target_dtype)
            elif kind == "normals" and value.dtype == torch.uint8:
                out[key] = _zero_outside(decode_normals_png8(value), boxes)
        return out


def _metas(sample: Sample, batched: bool) -> list[dict[str, Any]]:
    """The ``meta`` dict of each sample of a batch (or of the one sample), as a new list."""
    metas = sample.get("meta", [] if batched else {})
    return list(metas) if batched else [metas]


def _valid_boxes(sample: Sample, batched: bool) -> list[tuple[int, int, int, int] | None]:
    """``meta['valid_box']`` of each sample of a batch (or of the one sample); None where there is none."""
    return [tuple(int(v) for v in m["valid_box"]) if m and "valid_box" in m else None for m in _metas(sample, batched)]


def _zero_outside(x: torch.Tensor, boxes: list[tuple[int, int, int, int] | None]) -> torch.Tensor:
    """Set a (C, H, W) tensor, or each (C, H, W) plane of a batch, to 0 outside its box, in place.

    Args:
        x: (C, H, W) with one box, or (B, C, H, W) with B boxes ``(top, left, height, width)`` (None: keep).
    """
    planes = x if x.dim() == 4 else x[None]
    if len(boxes) != planes.shape[0]:
        raise ValueError(f"{planes.shape[0]} samples but {len(boxes)} meta entries")
    for plane, box in zip(planes, boxes):
        if box is None:
            continue
        top, left, h, w = box
        plane[:, :top] = 0
        plane[:, top + h :] = 0
        plane[:, :, :left] = 0
        plane[:, :, left + w :] = 0
    return x


def split_contract(pipeline: Compose) -> tuple[Compose, ToContract | None]:
    """Split a pipeline before its final :class:`ToContract` step.

    Returns:
        (the pipeline without that step, sharing its generator; the step), or (``pipeline``, None) when
        its last step is not a :class:`ToContract`.
    """
    steps = pipeline.transforms
    if not steps or not isinstance(steps[-1], ToContract):
        return pipeline, None
    head = Compose(steps[:-1])
    head.generator = pipeline.generator
    return head, steps[-1]


def _check_mode(mode: str, allowed: tuple[str, ...], what: str) -> None:
    if mode not in allowed:
        raise ValueError(f"unknown {what} {mode!r}; expected one of {list(allowed)}")


# ------------------------------------------------------------------------------------- predictions


def resize_back(preds: dict[str, torch.Tensor], size: Sequence[int]) -> dict[str, torch.Tensor]:
    """Bring batched predictions to ``size`` as MTI-Net scores them (§3.2 test).

    Args:
        preds: task -> (B, C, h, w) model outputs (class logits for segmentation tasks).
        size: target (H, W), pixels.

    Returns:
        task -> segmentation tasks: int64 (B, H, W) labels, argmax then nearest; other tasks: float
        (B, C, H, W) bilinear (``align_corners=False``), normals re-normalised.
    """
    size = _pair(size, "size")
    out: dict[str, torch.Tensor] = {}
    for task, p in preds.items():
        if TASKS[task].is_classification:
            labels = p.argmax(1)
            rows = _nearest_index(p.shape[-2], size[0], 0, size[0]).to(p.device)
            cols = _nearest_index(p.shape[-1], size[1], 0, size[1]).to(p.device)
            out[task] = _gather_nearest(labels, rows, cols)
            continue
        y = p if tuple(p.shape[-2:]) == size else F.interpolate(p.float(), size=size, mode="bilinear")
        if TASKS[task].kind == "normals":
            y = _renormalize(y)
        out[task] = y
    return out


def restore_predictions(preds: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One sample's predictions back on its original image: crop ``meta['valid_box']``, resize to ``meta['size']``.

    Args:
        preds: task -> (C, h, w) prediction of one sample at the network input size.
        meta: the sample's ``meta`` (after transforms).

    Returns:
        task -> segmentation tasks int64 (H, W) labels; others float (C, H, W); (H, W) = ``meta['size']``.
        Flips and random crops are training-only and not undone.
    """
    top, left, h, w = meta.get("valid_box", (0, 0, *next(iter(preds.values())).shape[-2:]))
    cropped = {t: p[None, :, top : top + h, left : left + w] for t, p in preds.items()}
    return {t: v[0] for t, v in resize_back(cropped, meta["size"]).items()}


# ----------------------------------------------------------------------------------------- presets

PRESETS: Registry[Callable[..., Compose]] = Registry("transform preset")
register_preset = PRESETS.register

DEFAULT_SIZES: dict[tuple[str, str], Size] = {
    ("invpt", "nyud"): (448, 576),
    ("invpt", "pascal"): (512, 512),
    ("mtinet", "nyud"): (480, 640),
    ("mtinet", "pascal"): (512, 512),
    ("autolambda", "nyuv2_13"): (288, 384),
}
"""(preset, dataset family) -> default train/test size (height, width)."""

PRESET_NORMALIZATION: dict[str, str] = {
    "invpt": "imagenet",
    "mtinet": "imagenet",
    "mtan": "unit",
    "autolambda": "half",
    "ctal_cnn": "unit",
    "none": "imagenet",
}
"""Default normalisation of each preset (a key of :data:`NORMALIZATIONS`)."""


def resolve_normalization(
    preset: str,
    normalization: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) on [0, 1] pixels: explicit ``mean``/``std`` win, then ``normalization``, then the preset's."""
    name = normalization if normalization is not None else PRESET_NORMALIZATION.get(preset, "imagenet")
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {name!r}; available: {sorted(NORMALIZATIONS)}")
    base_mean, base_std = NORMALIZATIONS[name]
    mean = tuple(float(m) for m in mean) if mean is not None else base_mean
    std = tuple(float(s) for s in std) if std is not None else base_std
    for what, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) != 3:
            raise ValueError(f"{what} must have 3 values (RGB), got {v!r}")
    return mean, std


def _size_for(preset: str, family: str, size: Sequence[int] | int | None) -> Size:
    if size is not None:
        return _pair(size, f"{preset} size")
    if (preset, family) not in DEFAULT_SIZES:
        known = sorted(f for p, f in DEFAULT_SIZES if p == preset)
        raise ValueError(
            f"preset {preset!r} has no default size for dataset family {family!r} (defaults exist for {known}); "
            f"give the size explicitly"
        )
    return DEFAULT_SIZES[(preset, family)]


def build_transform(
    preset: str,
    train: bool,
    family: str = "nyud",
    size: Sequence[int] | int | None = None,
    normalization: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **options: Any,
) -> Compose:
    """Build a preset's training (``train=True``) or evaluation pipeline.

    Args:
        preset: a name in :data:`PRESETS` (``invpt``, ``mtinet``, ``mtan``, ``autolambda``, ``ctal_cnn``,
            ``none``).
        train: training pipeline (augmentation) or evaluation pipeline.
        family: dataset family (``nyud``, ``pascal``, ``nyuv2_13``): picks default sizes.
        size: (height, width) of the crop/pad/resize; None: the preset's default for ``family``.
        normalization: a key of :data:`NORMALIZATIONS`; None: the preset's default.
        mean, std: explicit per-channel values on [0, 1] pixels (override ``normalization``).
        **options: preset-specific keyword options (see each ``preset_*`` builder).
    """
    builder = PRESETS.get(preset)
    m, s = resolve_normalization(preset, normalization, mean, std)
    return builder(train=train, family=family, size=size, mean=m, std=s, **options)


def _finish(mean: Sequence[float] | None, std: Sequence[float] | None, image: str, normals: str) -> list[Transform]:
    """The last two steps of every preset but ``invpt``: compact encoding (the modes of :class:`ToCompact`
    that the preset's steps allow), then the contract (see :func:`split_contract`)."""
    return [ToCompact(image=image, normals=normals), ToContract(mean, std)]


@register_preset("invpt")
def preset_invpt(
    train: bool,
    family: str = "nyud",
    size: Sequence[int] | int | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    scale_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip: float = 0.5,
    distort: bool = True,
) -> Compose:
    """ATRC / InvPT / TaskPrompter / MLoRE / CTAL transformer (§3.1): NYUD 448x576, PASCAL 512x512.

    Train: random scale + crop (cat_max_ratio) + flip (one fused step), photometric distortion, image
    rounded to uint8, centred pad, normalise (padding 0 after normalising). Test: centred pad, normalise
    (an image larger than ``size`` raises).
    """
    size = _size_for("invpt", family, size)
    steps: list[Transform] = []
    if train:
        steps.append(
            RandomScaleCrop(size, scale_range=scale_range, cat_max_ratio=cat_max_ratio, flip=flip, uint8_image=True)
        )
        if distort:
            steps.append(PhotometricDistortion(defer=True))  # applied by ToContract, on the device for loaders
    # every step of this preset keeps the normals' encoding (scale-crop, flip and pad act on codes exactly)
    steps += [
        ToCompact(image="round", normals="keep"),
        CentredPad(size, protocol="InvPT"),
        ToContract(mean, std, zero_padding=True),
    ]
    return Compose(steps)


@register_preset("mtinet")
def preset_mtinet(
    train: bool,
    family: str = "nyud",
    size: Sequence[int] | int | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    flip: float = 0.5,
) -> Compose:
    """MTI-Net / MT-CP (§3.2): NYUD zoom {1, 1.2, 1.5}, 480x640; PASCAL rotate ±20° and zoom 0.75-1.25, 512x512.

    Train: flip, affine (image bicubic, targets nearest, normals rotated and re-normalised, depth / zoom),
    fixed resize. Test: fixed resize only; ``meta['size']`` keeps the original size for
    :func:`restore_predictions` / :func:`resize_back`.
    """
    size = _size_for("mtinet", family, size)
    steps: list[Transform] = []
    if train:
        if flip > 0:
            steps.append(RandomHorizontalFlip(flip))
        if family == "pascal":
            steps.append(RandomAffine(angle_range=(-20.0, 20.0), scale_range=(0.75, 1.25)))
        else:
            steps.append(RandomAffine(angle_range=None, scale_range=None, scale_choices=(1.0, 1.2, 1.5)))
    # the image is uint8 after a zoom of 1 and a bicubic float otherwise; normals are float after a warp
    steps += [Resize(size, image_mode="bicubic", normals_mode="nearest"), *_finish(mean, std, "float", "float")]
    return Compose(steps)


@register_preset("mtan")
def preset_mtan(
    train: bool,
    family: str = "nyuv2_13",
    size: Sequence[int] | int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = False,
) -> Compose:
    """mtan (§3.3): no augmentation unless ``augment``: crop (H/s, W/s), s in {1, 1.2, 1.5}, resized back
    (labels and depth nearest, normals bilinear), depth / s, flip. Pixels in [0, 1] by default. ``size``
    is unused (the data are pre-sized)."""
    steps: list[Transform] = []
    if train and augment:
        steps += [RandomCropResize((1.0, 1.2, 1.5)), RandomHorizontalFlip(0.5)]
    steps += _finish(mean, std, "float", "float")  # crop-resize: float image and normals except at s = 1
    return Compose(steps)


@register_preset("autolambda")
def preset_autolambda(
    train: bool,
    family: str = "nyuv2_13",
    size: Sequence[int] | int | None = None,
    mean: Sequence[float] | None = (0.5, 0.5, 0.5),
    std: Sequence[float] | None = (0.5, 0.5, 0.5),
) -> Compose:
    """Auto-λ (§3.3): zoom s in {1, 1.2, 1.5} (image bilinear, every target nearest), random crop to 288x384,
    flip, depth / s, normals not re-normalised, image 2x - 1. Test: normalisation only."""
    steps: list[Transform] = []
    if train:
        size = _size_for("autolambda", family, size)
        steps += [
            RandomScaleCrop(size, scale_range=None, scale_choices=(1.0, 1.2, 1.5), cat_max_ratio=1.0),
            CentredPad(size, protocol="Auto-lambda"),
            RandomHorizontalFlip(0.5),
        ]
    steps += _finish(mean, std, "float", "float")  # scale-crop: float image except at s = 1
    return Compose(steps)


@register_preset("ctal_cnn")
def preset_ctal_cnn(
    train: bool,
    family: str = "nyuv2_13",
    size: Sequence[int] | int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Compose:
    """CTAL CNN (§3.4): random flip (train only), no normalisation (pixels in [0, 1])."""
    steps: list[Transform] = [RandomHorizontalFlip(0.5)] if train else []
    steps += _finish(mean, std, "keep", "keep")  # a flip keeps every dtype
    return Compose(steps)


@register_preset("none")
def preset_none(
    train: bool,
    family: str = "nyud",
    size: Sequence[int] | int | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> Compose:
    """Float conversion and normalisation only, for pre-sized data (train and test alike)."""
    return Compose(_finish(mean, std, "keep", "keep"))
