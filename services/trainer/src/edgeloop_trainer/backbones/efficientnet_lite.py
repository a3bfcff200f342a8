"""EfficientNet-Lite rebuilt with the Keras 3 functional API, loading a PyTorch ``state_dict``.

The checkpoints are the TF EfficientNet-Lite weights ported to PyTorch under the
``efficientnet_pytorch`` key names (``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv`` ...,
``_conv_head``, ``_bn1``, ``_fc``). The block structure (number of blocks, expansion, kernel sizes,
channels) is read from the weights and checked against what the variant's width/depth coefficients
predict; only the per-stage strides, which leave no trace in the weights, come from the architecture.

Lite differs from EfficientNet B0..: ReLU6 instead of swish, no squeeze-and-excitation, and the stem
(32 filters), head (1280 filters) and the first and last stages' repeats are not scaled. The model takes
raw RGB pixel values in 0..255 and normalizes them itself with ``(x - 127) / 128``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

__all__ = ["LITE_VARIANTS", "LiteVariant", "build_efficientnet_lite"]

BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
# The base (B0) stages: (kernel, repeats, output filters, expansion, stride). The stride is the first block's.
BASE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 16, 1, 1),
    (3, 2, 24, 6, 2),
    (5, 2, 40, 6, 2),
    (3, 3, 80, 6, 2),
    (5, 3, 112, 6, 1),
    (5, 4, 192, 6, 2),
    (3, 1, 320, 6, 1),
)


@dataclass(frozen=True)
class LiteVariant:
    name: str
    width: float
    depth: float
    input_size: int


LITE_VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant("lite0", 1.0, 1.0, 224),
        LiteVariant("lite1", 1.0, 1.1, 240),
        LiteVariant("lite2", 1.1, 1.2, 260),
        LiteVariant("lite3", 1.2, 1.4, 280),
        LiteVariant("lite4", 1.4, 1.8, 300),
    )
}


@dataclass(frozen=True)
class _Block:
    index: int
    in_filters: int
    out_filters: int
    expanded: int  # channels of the depthwise conv (== in_filters without an expansion conv)
    kernel: int
    stride: int

    @property
    def has_expansion(self) -> bool:
        return self.expanded != self.in_filters

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _expected_stages(variant: LiteVariant) -> list[tuple[int, int]]:
    """(repeats, output filters) per stage, as TF's efficientnet_lite_builder scales them."""
    stages = []
    for i, (_kernel, repeats, filters, _expand, _stride) in enumerate(BASE_STAGES):
        fixed = i in (0, len(BASE_STAGES) - 1)
        stages.append(
            (repeats if fixed else math.ceil(variant.depth * repeats), _round_filters(filters, variant.width))
        )
    return stages


def _resolve_variant(variant: str) -> LiteVariant:
    key = variant.lower().removeprefix("efficientnet-").removeprefix("efficientnet_")
    if key not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(LITE_VARIANTS)}")
    return LITE_VARIANTS[key]


def _blocks_from_weights(variant: LiteVariant, weights: dict[str, np.ndarray]) -> list[_Block]:
    indices = sorted({int(m.group(1)) for k in weights if (m := re.match(r"_blocks\.(\d+)\.", k))})
    if not indices or indices != list(range(len(indices))):
        raise ValueError("the weights have no contiguous _blocks.<i> entries: not an EfficientNet checkpoint")
    if any(k.startswith("_blocks.") and "_se_" in k for k in weights):
        raise ValueError("the weights have squeeze-excite convs: an EfficientNet (B*), not an EfficientNet-Lite")
    stem = _get(weights, "_conv_stem.weight")
    if stem.shape[:2] != (STEM_FILTERS, 3):
        raise ValueError(f"unexpected stem {stem.shape}; EfficientNet-Lite has a fixed {STEM_FILTERS}-filter stem")
    strides = iter(stage[4] for stage in BASE_STAGES)
    blocks: list[_Block] = []
    in_filters = STEM_FILTERS
    for i in indices:
        depthwise = _get(weights, f"_blocks.{i}._depthwise_conv.weight")
        project = _get(weights, f"_blocks.{i}._project_conv.weight")
        expanded, kernel = depthwise.shape[0], depthwise.shape[2]
        out_filters = project.shape[0]
        expand = weights.get(f"_blocks.{i}._expand_conv.weight")
        if expand is not None and expand.shape[:2] != (expanded, in_filters):
            raise ValueError(f"block {i}: expansion conv {expand.shape} does not fit {in_filters}->{expanded}")
        if expand is None and expanded != in_filters:
            raise ValueError(f"block {i}: depthwise conv has {expanded} channels but its input has {in_filters}")
        # Every stage changes the channel count, so a block whose output differs from its input opens a stage.
        stage_start = i == 0 or out_filters != in_filters
        stride = next(strides, None) if stage_start else 1
        if stride is None:
            raise ValueError("the weights have more stages than EfficientNet-Lite's seven")
        blocks.append(_Block(i, in_filters, out_filters, expanded, kernel, stride))
        in_filters = out_filters
    found = _stages_of(blocks)
    expected = _expected_stages(variant)
    if found != expected:
        raise ValueError(
            f"the weights' stages (repeats, filters) {found} are not EfficientNet-{variant.name}'s {expected}"
        )
    for block in blocks:
        kernel, _, _, expand_ratio, _ = BASE_STAGES[_stage_index(blocks, block)]
        if block.kernel != kernel or block.expanded != block.in_filters * expand_ratio:
            raise ValueError(f"block {block.index}: kernel {block.kernel} / width {block.expanded} unexpected")
    return blocks


def _stages_of(blocks: list[_Block]) -> list[tuple[int, int]]:
    stages: list[tuple[int, int]] = []
    for block in blocks:
        if block.index == 0 or block.out_filters != block.in_filters:
            stages.append((1, block.out_filters))
        else:
            stages[-1] = (stages[-1][0] + 1, stages[-1][1])
    return stages


def _stage_index(blocks: list[_Block], block: _Block) -> int:
    return sum(1 for b in blocks[: block.index + 1] if b.index == 0 or b.out_filters != b.in_filters) - 1


def _layer_name(key: str) -> str:
    """``_blocks.3._expand_conv`` -> ``blocks_3_expand_conv``."""
    return key.strip("_").replace("._", "_").replace(".", "_")


def _get(weights: dict[str, np.ndarray], key: str) -> np.ndarray:
    try:
        return weights[key]
    except KeyError:
        raise ValueError(f"the weights lack {key!r}: not an EfficientNet-Lite checkpoint") from None


def _conv(weights: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
    return [np.transpose(_get(weights, f"{key}.weight"), (2, 3, 1, 0)).astype(np.float32)]  # OIHW -> HWIO


def _depthwise(weights: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
    return [np.transpose(_get(weights, f"{key}.weight"), (2, 3, 0, 1)).astype(np.float32)]  # C1HW -> HWC1


def _bn(weights: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
    return [_get(weights, f"{key}.{p}").astype(np.float32) for p in ("weight", "bias", "running_mean", "running_var")]


def build_efficientnet_lite(
    variant: str,
    weights: dict[str, np.ndarray],
    *,
    include_top: bool,
    input_size: int | None = None,
) -> keras.Model:
    """EfficientNet-Lite ``variant`` ("lite0".."lite4") with ``weights`` (a torch state dict as numpy) loaded.

    The model takes ``(N, H, W, 3)`` float RGB in 0..255; ``H = W = input_size`` (the variant's native size
    when None; pass 0 for a variable-size input). With ``include_top`` it outputs the 1000 ImageNet logits,
    without it the globally average-pooled 1280-d features.
    """
    spec = _resolve_variant(variant)
    blocks = _blocks_from_weights(spec, weights)
    size = spec.input_size if input_size is None else (input_size or None)
    loads: list[tuple[layers.Layer, list[np.ndarray]]] = []

    def load(layer: layers.Layer, values: list[np.ndarray]) -> layers.Layer:
        loads.append((layer, values))
        return layer

    def conv_bn(x: keras.KerasTensor, key: str, bn_key: str, filters: int, *, act: bool) -> keras.KerasTensor:
        name = _layer_name(key)
        x = load(layers.Conv2D(filters, 1, padding="same", use_bias=False, name=name), _conv(weights, key))(x)
        x = load(layers.BatchNormalization(epsilon=BN_EPSILON, name=_layer_name(bn_key)), _bn(weights, bn_key))(x)
        return layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x

    inputs = keras.Input(shape=(size, size, 3), name="rgb_0_255")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="lite_normalize")(inputs)
    x = load(
        layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="conv_stem"),
        _conv(weights, "_conv_stem"),
    )(x)
    x = load(layers.BatchNormalization(epsilon=BN_EPSILON, name="bn0"), _bn(weights, "_bn0"))(x)
    x = layers.ReLU(6.0, name="stem_relu6")(x)

    for block in blocks:
        prefix = f"_blocks.{block.index}"
        name = f"blocks_{block.index}"
        shortcut = x
        if block.has_expansion:
            x = conv_bn(x, f"{prefix}._expand_conv", f"{prefix}._bn0", block.expanded, act=True)
        dw = layers.DepthwiseConv2D(
            block.kernel, strides=block.stride, padding="same", use_bias=False, name=f"{name}_depthwise_conv"
        )
        x = load(dw, _depthwise(weights, f"{prefix}._depthwise_conv"))(x)
        x = load(layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn1"), _bn(weights, f"{prefix}._bn1"))(x)
        x = layers.ReLU(6.0, name=f"{name}_relu6")(x)
        x = conv_bn(x, f"{prefix}._project_conv", f"{prefix}._bn2", block.out_filters, act=False)
        if block.has_skip:
            x = layers.Add(name=f"{name}_add")([x, shortcut])

    x = conv_bn(x, "_conv_head", "_bn1", HEAD_FILTERS, act=True)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        fc_weight = _get(weights, "_fc.weight")
        fc = layers.Dense(fc_weight.shape[0], name="fc")
        x = load(fc, [fc_weight.T.astype(np.float32), _get(weights, "_fc.bias").astype(np.float32)])(x)
    model = keras.Model(inputs, x, name=f"efficientnet_{spec.name}" + ("" if include_top else "_features"))
    for layer, values in loads:
        layer.set_weights(values)
    return model
