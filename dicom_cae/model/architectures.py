"""Model architectures, selectable by name.

- ``seed``: the seed autoencoder, exactly as ARCHITECTURE.md fixes it (591,617 parameters).
- ``seed-residual``: the same layers, but the last convolution predicts a correction that is
  added to the JPEG image (output = JPEG + correction, clipped to [0, 1]).
- ``blockres``: JPEG-aware and quality-conditioned. Each 8x8 JPEG block becomes 64 channels
  of a 32x32 grid (space-to-depth aligned with the JPEG block grid), a plane holding the JPEG
  quality is appended, five 3x3 convolutions (128 channels) predict the correction of every
  block's 64 pixels, and depth-to-space puts it back: output = JPEG + correction. 591,552
  parameters, about a sixth of the seed's arithmetic per image.
- ``deblock``: blockres told everything the decoder knows: the JPEG quality (with the flat
  tables of codec's trellis encoder, the table's scale) and the coding size (a smaller coding's
  blocks land on a coarser grid after upsampling), so one set of weights serves every quality
  and coding size the settings can pick, with no pass-through gaps. blockres's five 3x3
  convolutions of 128 channels on the 32x32 block grid, one more input plane (592,704
  parameters: it can start from blockres's weights); trained for what a reader sees (display
  windows and block edges, see train.make_reader_loss). Its output's block edges are smoothed
  by codec.smooth_block_edges (the small steps it leaves, spread over the blocks). It can run
  in bfloat16 (build(precision=...); reconstructor.choose_precision says when).
- ``deblock-deep`` (the default): deblock with seven convolutions instead of five (887,872
  parameters); train.init_from starts it from deblock's weights, the two more layers as the
  identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import keras
from keras import layers

SIZE = 256
BLOCK = 8


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., keras.Model]
    uses_quality: bool
    description: str
    uses_coding: bool = False  # takes the coding size / 256 as a third input
    edge_filter: bool = False  # its output's block edges are smoothed (codec.smooth_block_edges)
    flips: int = 1  # its output is the mean over this many flips of its input (reconstructor.FLIPS)
    bfloat16: bool = False  # build(precision="bfloat16") runs its convolutions in bfloat16


#: The Keras dtype policy of layers run in bfloat16: float32 variables (the weights load and
#: save as float32), bfloat16 arithmetic.
BFLOAT16_POLICY = "mixed_bfloat16"


def _conv(filters: int, activation: str | None = "relu", **kw) -> layers.Conv2D:
    return layers.Conv2D(filters, 3, padding="same", activation=activation, **kw)


def _seed_body(inp: keras.KerasTensor) -> keras.KerasTensor:
    """The seed's layers up to (not including) its last convolution."""
    x = _conv(64)(inp)
    x = layers.MaxPooling2D()(x)
    x = _conv(128)(x)
    x = layers.MaxPooling2D()(x)
    x = _conv(128)(x)
    x = layers.MaxPooling2D()(x)
    x = _conv(128)(x)
    x = layers.UpSampling2D()(x)
    x = _conv(128)(x)
    x = layers.UpSampling2D()(x)
    x = _conv(64)(x)
    return layers.UpSampling2D()(x)


def build_seed() -> keras.Model:
    inp = keras.Input((SIZE, SIZE, 1), name="jpeg")
    out = _conv(1, "sigmoid")(_seed_body(inp))
    return keras.Model(inp, out, name="seed")


def _clip01(**kw) -> layers.Layer:
    # ReLU with max_value clips to [0, 1] without a Lambda layer.
    return layers.ReLU(max_value=1.0, name="clip01", **kw)


def build_seed_residual() -> keras.Model:
    inp = keras.Input((SIZE, SIZE, 1), name="jpeg")
    corr = _conv(1, None, kernel_initializer="zeros")(_seed_body(inp))
    out = _clip01()(layers.Add()([inp, corr]))
    return keras.Model(inp, out, name="seed-residual")


def space_to_depth(x: keras.KerasTensor, block: int = BLOCK, **kw) -> keras.KerasTensor:
    n = SIZE // block
    x = layers.Reshape((n, block, n, block), **kw)(x)
    x = layers.Permute((1, 3, 2, 4), **kw)(x)
    return layers.Reshape((n, n, block * block), **kw)(x)


def depth_to_space(x: keras.KerasTensor, block: int = BLOCK, **kw) -> keras.KerasTensor:
    n = SIZE // block
    x = layers.Reshape((n, n, block, block), **kw)(x)
    x = layers.Permute((1, 3, 2, 4), **kw)(x)
    return layers.Reshape((SIZE, SIZE, 1), **kw)(x)


def build_blockres(filters: int = 128, depth: int = 5) -> keras.Model:
    inp = keras.Input((SIZE, SIZE, 1), name="jpeg")
    quality = keras.Input((1,), name="quality")  # JPEG quality / 100
    n = SIZE // BLOCK
    x = space_to_depth(inp)
    q = layers.Reshape((1, 1, 1))(quality)
    q = layers.UpSampling2D(size=n)(q)
    x = layers.Concatenate()([x, q])
    for _ in range(depth - 1):
        x = _conv(filters)(x)
    corr = _conv(BLOCK * BLOCK, None, kernel_initializer="zeros")(x)
    out = _clip01()(layers.Add()([inp, depth_to_space(corr)]))
    return keras.Model([inp, quality], out, name="blockres")


def build_deblock(filters: int = 128, depth: int = 5, *, precision: str = "float32", name: str = "deblock") -> keras.Model:
    """``precision`` "bfloat16": everything up to the correction in bfloat16 (the network sees
    its input rounded to bfloat16); the correction is put back in place and added to the
    float32 input in float32, so the output keeps the input's precision where the correction is
    small. On CPUs with bfloat16 units (AMX, AVX512-BF16) about 4x faster than float32."""
    body = {"dtype": BFLOAT16_POLICY} if precision == "bfloat16" else {}
    tail = {"dtype": "float32"} if body else {}
    inp = keras.Input((SIZE, SIZE, 1), name="jpeg")
    quality = keras.Input((1,), name="quality")  # JPEG quality / 100
    coding = keras.Input((1,), name="coding")  # coding size / 256
    n = SIZE // BLOCK
    planes = layers.UpSampling2D(size=n, **body)(
        layers.Reshape((1, 1, 2), **body)(layers.Concatenate(**body)([quality, coding])))
    x = layers.Concatenate(**body)([space_to_depth(inp, **body), planes])
    for _ in range(depth - 1):
        x = _conv(filters, **body)(x)
    corr = _conv(BLOCK * BLOCK, None, kernel_initializer="zeros", **body)(x)
    out = _clip01(**tail)(layers.Add(**tail)([inp, depth_to_space(corr, **tail)]))
    return keras.Model([inp, quality, coding], out, name=name)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("seed", build_seed, False, "the seed autoencoder (591,617 parameters)"),
        Architecture(
            "seed-residual", build_seed_residual, False, "seed layers, output = JPEG + correction"
        ),
        Architecture(
            "blockres",
            build_blockres,
            True,
            "8x8-block space-to-depth, quality-conditioned residual network (591,552 parameters)",
        ),
        Architecture(
            "deblock",
            build_deblock,
            True,
            "8x8-block space-to-depth residual network told the JPEG quality and the coding size, "
            "trained in the display windows and at the block edges (592,704 parameters)",
            uses_coding=True,
            edge_filter=True,
            flips=4,
            bfloat16=True,
        ),
        Architecture(
            "deblock-deep",
            partial(build_deblock, depth=7, name="deblock-deep"),
            True,
            "deblock with seven 3x3 convolutions of 128 channels on the block grid instead of five "
            "(887,872 parameters: it can start from deblock's weights, the two more layers as the identity)",
            uses_coding=True,
            edge_filter=True,
            flips=4,
            bfloat16=True,
        ),
    )
}


def architecture(name: str) -> Architecture:
    """The named architecture.

    Raises:
        ModelError: unknown name.
    """
    from dicom_cae.errors import ModelError

    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def build(name: str, *, precision: str = "float32") -> keras.Model:
    """Build the named architecture with fresh weights; ``precision`` "bfloat16" for one that
    allows it (Architecture.bfloat16), else float32 (training and the seed: float32).

    Raises:
        ModelError: unknown name, or a precision the architecture does not run in.
    """
    from dicom_cae.errors import ModelError
    from dicom_cae.precision import PRECISIONS

    arch = architecture(name)
    if precision == "float32":
        return arch.build()
    if precision == "bfloat16" and arch.bfloat16:
        return arch.build(precision=precision)
    raise ModelError(f"model {name!r} runs in {' or '.join(PRECISIONS if arch.bfloat16 else PRECISIONS[:1])}, "
                     f"not {precision!r}")
