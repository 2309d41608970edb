"""Loading a model with its weights, and batched reconstruction of JPEG images."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dicom_cae import codec, precision as site
from dicom_cae.errors import ModelError
from dicom_cae.model.architectures import ARCHITECTURES, SIZE, architecture, build

LOGGER = logging.getLogger(__name__)

#: The flips of the model's input whose outputs, flipped back, are averaged when an architecture
#: asks for more than one (Architecture.flips; a self-ensemble, as in Timofte et al. 2016 and
#: EDSR+): none, left-right, up-down, both, as axes of an (n, rows, columns) stack. Each is its
#: own inverse and the four are a group, so the mean of a flipped image is the mean flipped; each
#: keeps the 8x8 grid of every coding size on itself (the sizes are multiples of 8, and the
#: bicubic resampling back to 256 is symmetric). Measured on 78 validation slices at quality 26,
#: 4 flips against 1: +0.03 dB (CT) and +0.04 (MR) in the worst display window, +0.10 dB on the
#: seed's metric; at quality 8 +0.04 / +0.07, blockiness 1.13 -> 1.08 x the original's.
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))
#: FLIPS in words, for model cards.
FLIP_NAMES = ("the input", "the input flipped left-right", "flipped up-down", "flipped both ways")

from dicom_cae.weights import DEFAULT_MODEL, sha256_of, shipped_card_list  # noqa: E402,F401 (their home; re-exported)


def shipped_cards() -> dict[str, dict[str, Any]]:
    """The general (all-quality) shipped weights' cards, by model name. Weights that serve a
    band of JPEG qualities only (card key ``serves``) come with them, see ``load``."""
    return {c["model"]: c for c in shipped_card_list() if "serves" not in c}


@dataclass
class Reconstructor:
    """A model with loaded weights; call it on a batch of decoded JPEG images."""

    name: str
    model: keras.Model
    sha256: str
    weights_path: str
    card: dict[str, Any] = field(default_factory=dict)
    bands: list[Reconstructor] = field(default_factory=list)  # weights for a band of qualities
    _fn: Any = None

    @property
    def precision(self) -> str:
        """What the model's convolutions compute in (as built: choose_precision)."""
        return computes_in(self.model)

    @property
    def value_mapping(self) -> str:
        """The value mapping these weights were trained on (cards before mappings: minmax)."""
        return (self.card.get("data") or {}).get("value_mapping", "minmax")

    @property
    def coding_size(self) -> int:
        """The side of the JPEG-coded image these weights restore (256: JPEG artefacts only;
        smaller: decoded, upsampled bicubic to 256, then restored)."""
        return int(self.card.get("coding_size", SIZE))

    def for_quality(self, quality: int, mapping: str = "minmax") -> Reconstructor:
        """The weights that serve ``quality`` for 256x256 JPEG of images mapped by ``mapping``: a
        band trained on that mapping when one covers the quality, else a band trained on minmax,
        else these."""
        return self.for_coding(quality, mapping, SIZE) or self  # (weights for a smaller coding alone: these)

    def for_coding(self, quality: int, mapping: str, coding_size: int) -> Reconstructor | None:
        """The weights for JPEG of a ``coding_size`` image at ``quality``: as for_quality for
        256; for a smaller coding a band trained on it, or None (the decode passes through).
        Weights of a model told the coding size serve every quality and size themselves."""
        if self.uses_coding:
            return self
        for wanted in dict.fromkeys((mapping, "minmax")):
            for band in self.bands:
                lo, hi = band.card["serves"]
                if lo <= quality <= hi and band.value_mapping == wanted and band.coding_size == coding_size:
                    return band
        return self if coding_size == self.coding_size else None

    @property
    def identity(self) -> str:
        """The SHA-256 of these weights and of every band's (what decides a targeted output)."""
        if not self.bands:
            return self.sha256
        return hashlib.sha256("".join([self.sha256, *(b.sha256 for b in self.bands)]).encode()).hexdigest()

    @property
    def uses_quality(self) -> bool:
        return ARCHITECTURES[self.name].uses_quality

    @property
    def uses_coding(self) -> bool:
        return ARCHITECTURES[self.name].uses_coding

    @property
    def edge_filter(self) -> str | None:
        """The block-edge filter applied to this model's output (codec.EDGE_FILTER_ID: the filter
        and its settings), or None."""
        return codec.EDGE_FILTER_ID if ARCHITECTURES[self.name].edge_filter else None

    @property
    def flips(self) -> int:
        """How many flips of the input (FLIPS) the output is the mean over."""
        return ARCHITECTURES[self.name].flips

    @property
    def decoder(self) -> str | None:
        """What is done around the model, as the outputs' UIDs depend on it: the precision when
        not float32, the self-ensemble over its flips and the block-edge filter
        ('bfloat16:flips4:ramp(...)'), or None (the model alone, in float32)."""
        parts = ([self.precision] if self.precision != "float32" else []) + (
            [f"flips{self.flips}"] if self.flips > 1 else []) + ([self.edge_filter] if self.edge_filter else [])
        return ":".join(parts) or None

    @property
    def max_quality(self) -> int:
        """The highest JPEG quality at which the model card shows the model beating plain JPEG
        in PSNR; above it the model passes the JPEG image through unchanged. 100 when the card
        says nothing (weights being trained) and for models not told the quality (the seed, which
        runs as asked wherever it is asked)."""
        if not self.uses_quality or self.uses_coding:  # (one model for all: the store guard decides)
            return 100
        rows = (self.card.get("validation") or {}).get("by_quality") or {}
        good = [int(q) for q, v in rows.items() if v["model"]["psnr"] > v["jpeg"]["psnr"]]
        return max(good) if good else (100 if not rows else 0)

    @property
    def short_id(self) -> str:
        return f"{self.name}-{self.sha256[:8]}"

    def _compiled(self) -> Any:
        if self._fn is None:
            model = self.model
            self._fn = tf.function(
                lambda *inputs: model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
            )
        return self._fn

    def __call__(self, jpeg: np.ndarray, quality: int | np.ndarray, *, batch_size: int = 16,
                 mapping: str = "minmax", coding_size: int = SIZE, filter_edges: bool = True,
                 flips: int | None = None) -> np.ndarray:
        """Reconstruct images (n, 256, 256) in [0, 1] from their JPEG decodes; float32 out.
        ``filter_edges`` False: without the block-edge filter of edge_filter (to measure it);
        ``flips``: the mean over that many of FLIPS rather than the architecture's ``flips``.

        ``quality`` is one JPEG quality for all, or one per image; images of a quality above
        ``max_quality`` come back unchanged, as do the decodes of a ``coding_size`` smaller
        than 256 that no band serves. The last partial batch is padded so that the compiled
        graph keeps one shape.
        """
        x = np.asarray(jpeg, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (SIZE, SIZE):
            raise ValueError(f"expected images of shape (n, {SIZE}, {SIZE}), got {x.shape}")
        n = x.shape[0]
        qualities = np.broadcast_to(np.asarray(quality, dtype=np.float32), (n,))
        out = x.copy()  # what no weights serve passes through
        groups: dict[int, tuple[Reconstructor, list[int]]] = {}
        for i, q in enumerate(qualities):
            owner = self.for_coding(int(q), mapping, coding_size)
            if owner is not None:
                groups.setdefault(id(owner), (owner, []))[1].append(i)
        for owner, idx in groups.values():
            out[idx] = owner._run(x[idx], qualities[idx], batch_size, coding_size, filter_edges,
                                  owner.flips if flips is None else flips)
        return out

    def _run(self, x: np.ndarray, qualities: np.ndarray, batch_size: int, coding_size: int = SIZE,
             filter_edges: bool = True, flips: int = 1) -> np.ndarray:
        if not 1 <= flips <= len(FLIPS):
            raise ValueError(f"flips must be 1 to {len(FLIPS)}, got {flips}")
        out = x.copy()  # images above max_quality pass through
        served = np.flatnonzero(qualities <= self.max_quality)
        x, q = x[served], qualities[served] / 100.0
        # All flips in one run of the model: a few frames fill one padded batch, not one each.
        stacked = np.concatenate([np.flip(x, axes) for axes in FLIPS[:flips]])
        y = np.split(self._forward(stacked, np.tile(q, flips), batch_size, coding_size), flips)
        result = np.mean([np.flip(part, axes) for part, axes in zip(y, FLIPS[:flips])], axis=0, dtype=np.float32)
        if self.edge_filter and filter_edges and len(served):
            result = codec.smooth_block_edges(result, qualities[served], coding_size)
        out[served] = result
        return out

    def _forward(self, x: np.ndarray, q: np.ndarray, batch_size: int, coding_size: int) -> np.ndarray:
        """The model on images ``x`` (n, 256, 256) told qualities ``q`` (0-1), in batches."""
        fn = self._compiled()
        result = np.empty_like(x)
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size, :, :, None]
            qb = q[start : start + batch_size, None]
            m = xb.shape[0]
            if m < batch_size:
                xb = np.concatenate([xb, np.zeros((batch_size - m, SIZE, SIZE, 1), np.float32)])
                qb = np.concatenate([qb, np.zeros((batch_size - m, 1), np.float32)])
            cb = np.full((batch_size, 1), coding_size / SIZE, np.float32)
            inputs = (xb, qb, cb) if self.uses_coding else (xb, qb) if self.uses_quality else (xb,)
            result[start : start + m] = np.asarray(fn(*inputs))[:m, :, :, 0]
        return result


def computes_in(model: keras.Model) -> str:
    """What ``model``'s convolutions compute in (float32, bfloat16, float16: a Keras dtype policy
    set globally, as training's --mixed-precision does, shows here too)."""
    return next((l.compute_dtype for l in model.layers if isinstance(l, keras.layers.Conv2D)), "float32")


def choose_precision(name: str, *, setting: str | None = None, flags: frozenset[str] | None = None,
                     gpu: bool | None = None) -> str:
    """The precision model ``name`` runs in here: float32, unless the architecture can run in
    bfloat16 (Architecture.bfloat16) and precision.resolve says bfloat16 for ``setting``
    (default: the environment variable), ``flags`` and ``gpu`` (default: this machine's). Measured on 48 validation slices at
    qualities 2-75: bfloat16 against float32, the stored reconstruction differs by 0.00003-0.00034
    rms (of [0, 1]) and every mean metric by at most 0.006 dB (deblock; deblock-deep 0.003), in a
    quarter to a third of the time.

    Raises:
        ModelError: an unknown model, a setting other than float32, bfloat16 or auto.
    """
    allows = architecture(name).bfloat16
    chosen = site.resolve(setting, flags=flags, gpu=gpu)  # (a mistyped setting is an error for every model)
    return chosen if allows else "float32"


def load(name: str | None = None, *, weights: str | Path | None = None, precision: str | None = None) -> Reconstructor:
    """The named model with its shipped weights, or with the weights in ``weights``, run in
    ``precision`` (float32, bfloat16 or auto; None: as choose_precision says).

    With ``weights`` and no ``name``, the architecture comes from the model card beside the
    weights file (``X.weights.h5`` -> ``X.json``), else the default model.

    Raises:
        ModelError: unknown name, no shipped weights for it, weights that do not fit, or an
            unknown precision.
    """
    card: dict[str, Any] = {}
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ModelError(f"weights file not found: {path}")
        card_path = path.with_name(path.name.removesuffix(".weights.h5") + ".json")
        if card_path.is_file():
            card = json.loads(card_path.read_text())
        name = name or card.get("model")
    name = name or DEFAULT_MODEL
    chosen = choose_precision(name, setting=precision)  # (also: an unknown name)
    if weights is None:
        cards = shipped_cards()
        if name not in cards:
            raise ModelError(
                f"no weights ship for model {name!r} (shipped: {', '.join(sorted(cards)) or 'none'}); "
                "train it with 'dicom-cae train' and pass --weights"
            )
        card = cards[name]
        path = Path(card["weights_path"])
        bands = [
            _load_file(name, Path(c["weights_path"]), c, chosen)
            for c in shipped_card_list()
            if c["model"] == name and "serves" in c
        ]
        recon = _load_file(name, path, card, chosen)
        recon.bands = bands
        return recon
    return _load_file(name, path, card, chosen)


def _load_file(name: str, path: Path, card: dict[str, Any], precision: str = "float32") -> Reconstructor:
    model = build(name, precision=precision)
    _check_weight_count(model, path, name)
    try:
        model.load_weights(str(path))
    except Exception as exc:  # keras raises ValueError/KeyError/OSError on mismatches
        raise ModelError(f"weights {path} do not fit model {name!r}: {exc}") from exc
    digest = sha256_of(path)
    if card.get("sha256") and card["sha256"] != digest:
        raise ModelError(f"weights {path} have sha256 {digest}, their model card says {card['sha256']}")
    recon = Reconstructor(name=name, model=model, sha256=digest, weights_path=str(path), card=card)
    LOGGER.info("model %s loaded from %s (sha256 %s, %s)", name, path.name, digest[:12], recon.precision)
    return recon


def _check_weight_count(model: keras.Model, path: Path, name: str) -> None:
    """Keras skips layers it cannot match with only a warning; refuse such files instead."""
    import h5py

    arrays: list[tuple[int, ...]] = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda key, obj: arrays.append(obj.shape)
                if isinstance(obj, h5py.Dataset) and key.startswith("layers/")
                else None
            )
    except OSError as exc:
        raise ModelError(f"weights {path} are not a Keras .weights.h5 file: {exc}") from exc
    expected = sorted(tuple(w.shape) for w in model.weights)
    if sorted(arrays) != expected:
        raise ModelError(
            f"weights {path} do not fit model {name!r}: the file holds {len(arrays)} arrays, "
            f"the model needs {len(expected)} of other shapes"
        )


def from_model(model: keras.Model, name: str) -> Reconstructor:
    """Wrap a model being trained (weights not on disk) for validation."""
    return Reconstructor(name=name, model=model, sha256="0" * 64, weights_path="")
