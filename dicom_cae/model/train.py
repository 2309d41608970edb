"""Training through the same normalize and JPEG path as conversion."""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import dicom_cae
from dicom_cae import codec, dataset, evaluation, metrics
from dicom_cae.model.architectures import ARCHITECTURES, build
from dicom_cae.model.reconstructor import FLIP_NAMES, from_model, sha256_of

LOGGER = logging.getLogger(__name__)

DEFAULT_TRAIN_QUALITIES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)
DEFAULT_VAL_QUALITIES = (1, 10)
CARD_QUALITIES = (1, 2, 5, 10, 20, 30, 50)


@dataclass(frozen=True)
class TrainConfig:
    model: str
    train_dirs: tuple[str, ...]
    val_dirs: tuple[str, ...]
    out_dir: str
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 3e-4
    train_qualities: tuple[int, ...] = DEFAULT_TRAIN_QUALITIES
    val_qualities: tuple[int, ...] = DEFAULT_VAL_QUALITIES
    augment: bool = True
    seed: int = 0
    mixed_precision: bool = False
    precision: str = "float32"  # bfloat16: the convolutions in bfloat16 (architectures that allow it), weights float32
    init_weights: str | None = None
    ssim_weight: float = 0.005
    repeats: int = 1
    loss: str | None = None  # "mse" or "bce"; default: "bce" for sigmoid outputs (seed), else "mse"
    value_mapping: str = "minmax"  # how modality values become the [0, 1] images (dicom_cae.mapping)
    coding_size: int = codec.SIZE  # JPEG of the image reduced to this size, decoded and upsampled (bicubic) to 256
    # For models told the coding size (deblock): qualities drawn log-uniformly from
    # quality_min..quality_max and coding sizes from codec.CODING_SIZES (256 half of the time);
    # the reader's loss below.
    quality_min: int = 1
    quality_max: int = 95
    display_weight: float = 1.0
    block_weight: float = 1.0
    blockiness_weight: float = 0.0  # the squared log of the blockiness ratio against the original's


#: Windows the reader's loss shows every CT in besides its own: brain (C40/W80) and soft tissue
#: (C40/W400), in HU. Narrow windows are where blocks and lost contrast show.
CT_TRAINING_WINDOWS = ((40.0, 80.0), (40.0, 400.0))
#: Windows per image in the reader's loss (the narrowest; fewer are repeated).
LOSS_WINDOWS = 3


def _loss_windows(images: "dataset.ImageSet") -> np.ndarray:
    """(n, LOSS_WINDOWS, 2): per image the [0, 1] ranges (a, b) of its narrowest display
    windows (its own, plus CT_TRAINING_WINDOWS for CT) under its value mapping."""
    out = np.empty((len(images), LOSS_WINDOWS, 2), np.float32)
    for i, view in enumerate(images.views):
        spans = [w.span for w in view.windows]
        if images.modalities[i].upper() == "CT":
            spans += [(c - w / 2, c + w / 2) for c, w in CT_TRAINING_WINDOWS]
        mapping = view.norm.mapping(0)
        ranges = sorted({tuple(float(v) for v in mapping.forward(np.asarray(s))) for s in spans},
                        key=lambda ab: ab[1] - ab[0])
        ranges = [(a, b) for a, b in ranges if b - a > 1e-3] or [(0.0, 1.0)]
        for k in range(LOSS_WINDOWS):
            out[i, k] = ranges[min(k, len(ranges) - 1)]
    return out


#: Errors below this (60 dB) count as nothing in the reader's loss: the 8-bit floor.
LOG_FLOOR = 1e-6


def make_reader_loss(display_weight: float, block_weight: float, blockiness_weight: float = 0.0) -> Any:
    """The loss of a model trained for what a reader sees, per image, in decibels (the log of
    each error, so that every image and every window counts by its gain in dB, as PSNR is
    averaged): the [0, 1] MSE, plus ``display_weight`` x the mean over the image's
    LOSS_WINDOWS display windows of the MSE there (each window's range stretched to [0, 1] and
    clipped, as a viewer shows it), plus ``block_weight`` x the mean squared error of the steps
    across the coding's block edges in its narrowest window (a block edge that the original
    does not have), plus ``blockiness_weight`` x the squared log of the output's blockiness
    there (metrics.blockiness: mean |step| across the edges over mean |step| elsewhere) over the
    original's, which is what the stored image is held to. ``y_true`` packs the target (channel 0), the windows' ranges (channels
    1..2*LOSS_WINDOWS, constant planes) and the block-edge masks (horizontal, vertical steps:
    the last two channels)."""
    nw = LOSS_WINDOWS

    def log(x: tf.Tensor) -> tf.Tensor:
        return tf.math.log(x + LOG_FLOOR)

    def reader(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        y_true = tf.cast(y_true, tf.float32)
        p = tf.cast(y_pred, tf.float32)[..., 0]
        t = y_true[..., 0]
        loss = log(tf.reduce_mean(tf.square(t - p), axis=[1, 2]))
        hmask, vmask = y_true[:, :, 1:, 1 + 2 * nw], y_true[:, 1:, :, 2 + 2 * nw]
        for k in range(nw):
            a = y_true[:, :1, :1, 1 + 2 * k]
            b = y_true[:, :1, :1, 2 + 2 * k]
            tw = tf.clip_by_value((t - a) / (b - a), 0.0, 1.0)
            pw = tf.clip_by_value((p - a) / (b - a), 0.0, 1.0)
            loss += display_weight / nw * log(tf.reduce_mean(tf.square(tw - pw), axis=[1, 2]))
            if k == 0:
                dh = (pw[:, :, 1:] - pw[:, :, :-1]) - (tw[:, :, 1:] - tw[:, :, :-1])
                dv = (pw[:, 1:, :] - pw[:, :-1, :]) - (tw[:, 1:, :] - tw[:, :-1, :])
                eh = tf.reduce_sum(hmask * tf.square(dh), axis=[1, 2]) / tf.maximum(tf.reduce_sum(hmask, axis=[1, 2]), 1.0)
                ev = tf.reduce_sum(vmask * tf.square(dv), axis=[1, 2]) / tf.maximum(tf.reduce_sum(vmask, axis=[1, 2]), 1.0)
                loss += block_weight * log(0.5 * (eh + ev))
                if blockiness_weight:
                    def blockiness(x: tf.Tensor) -> tf.Tensor:
                        sh, sv = tf.abs(x[:, :, 1:] - x[:, :, :-1]), tf.abs(x[:, 1:, :] - x[:, :-1, :])
                        across = tf.reduce_sum(hmask * sh, axis=[1, 2]) + tf.reduce_sum(vmask * sv, axis=[1, 2])
                        within = tf.reduce_sum((1 - hmask) * sh, axis=[1, 2]) + tf.reduce_sum((1 - vmask) * sv, axis=[1, 2])
                        n_across = tf.reduce_sum(hmask, axis=[1, 2]) + tf.reduce_sum(vmask, axis=[1, 2])
                        n_within = tf.reduce_sum(1 - hmask, axis=[1, 2]) + tf.reduce_sum(1 - vmask, axis=[1, 2])
                        return log(across / tf.maximum(n_across, 1.0)) - log(within / tf.maximum(n_within, 1.0))

                    loss += blockiness_weight * tf.square(blockiness(pw) - blockiness(tw))
        return loss / (1.0 + display_weight + block_weight)

    return reader


def _edge_masks(coding_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks (256, 256) of the horizontal and vertical steps across block edges: h[:, x] = 1
    where a block edge lies between columns x-1 and x; v the same for rows."""
    h = np.zeros((codec.SIZE, codec.SIZE), np.float32)
    h[:, codec.block_edges(coding_size)] = 1.0
    return h, h.T.copy()


def make_loss(ssim_weight: float, base: str = "mse") -> Any:
    """MSE (or binary cross-entropy), plus ``ssim_weight * (1 - SSIM)`` (Wang's window: 11x11,
    sigma 1.5) when positive. Cross-entropy suits a sigmoid output: its gradient does not vanish
    where the sigmoid saturates, where MSE's does (the seed got stuck at an all-black output)."""

    def mse_ssim(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        # One value per image, so that sample weights apply per image.
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        if base == "bce":
            eps = 1e-7
            p = tf.clip_by_value(y_pred, eps, 1 - eps)
            mse = -tf.reduce_mean(y_true * tf.math.log(p) + (1 - y_true) * tf.math.log(1 - p), axis=[1, 2, 3])
        else:
            mse = tf.reduce_mean(tf.square(y_true - y_pred), axis=[1, 2, 3])
        if ssim_weight <= 0:
            return mse
        ssim = tf.image.ssim(y_true, y_pred, max_val=1.0, filter_size=11, filter_sigma=1.5)
        return mse + ssim_weight * (1.0 - ssim)

    return mse_ssim


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and transposes: the 8 symmetries of the square keep the 8x8 block grid."""
    out = images.copy()
    for i in range(out.shape[0]):
        k = int(rng.integers(8))
        img = out[i]
        if k & 1:
            img = img[::-1]
        if k & 2:
            img = img[:, ::-1]
        if k & 4:
            img = img.T
        out[i] = img
    return out


def _epoch_inputs(
    images: np.ndarray, cfg: TrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One epoch: ``repeats`` passes over the images, each with its own augmentation and qualities.

    The sample weights are 1 / sqrt(the JPEG decode's MSE), scaled to mean 1: the lowest
    qualities, whose errors are largest, still count most, but not so much that the model
    learns nothing for the higher ones (1 / MSE, which would weigh every image by its error
    in dB, starved the lowest qualities in our runs).
    """
    target = np.concatenate([_augment(images, rng) if cfg.augment else images for _ in range(cfg.repeats)])
    qualities = rng.choice(np.asarray(cfg.train_qualities), size=target.shape[0])
    jpeg = np.empty_like(target)
    weight = np.empty(target.shape[0], np.float64)
    for i, (img, q) in enumerate(zip(target, qualities)):
        jpeg[i] = codec.decode_to(codec.encode_at(img, int(q), cfg.coding_size))
        # The floor (40 dB) keeps near-blank slices, which JPEG codes almost perfectly, from
        # taking all the weight: with 1e-8 they drove the seed's sigmoid output to a constant.
        weight[i] = 1.0 / np.sqrt(max(metrics.mse(img, jpeg[i]), 1e-4))
    weight /= weight.mean()
    return jpeg, qualities.astype(np.float32) / 100.0, target, weight.astype(np.float32)


def _reader_epoch_inputs(images: np.ndarray, windows: np.ndarray, cfg: TrainConfig, rng: np.random.Generator
                         ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One epoch for a model told the coding size: inputs [jpeg, quality / 100, size / 256],
    the packed targets of make_reader_loss, and sample weights (1: the loss, in dB, weighs
    every image by its gain already)."""
    n = images.shape[0] * cfg.repeats
    index = np.concatenate([rng.permutation(images.shape[0]) for _ in range(cfg.repeats)])
    target = _augment(images[index], rng) if cfg.augment else images[index]
    qualities = np.clip(np.rint(np.exp(rng.uniform(np.log(cfg.quality_min - 0.5 if cfg.quality_min > 1 else 1),
                                                    np.log(cfg.quality_max + 0.5), n))), cfg.quality_min, cfg.quality_max)
    smaller = np.asarray([c for c in codec.CODING_SIZES if c != codec.SIZE])
    sizes = np.where(rng.random(n) < 0.5, codec.SIZE, rng.choice(smaller, n))
    jpeg = np.empty_like(target)
    packed = np.empty(target.shape + (3 + 2 * LOSS_WINDOWS,), np.float32)
    masks = {int(c): _edge_masks(int(c)) for c in codec.CODING_SIZES}
    for i in range(n):
        q, size, w = int(qualities[i]), int(sizes[i]), windows[index[i]]
        jpeg[i] = codec.decode_to(codec.encode_at(target[i], q, size))
        packed[i, ..., 0] = target[i]
        packed[i, ..., 1 : 1 + 2 * LOSS_WINDOWS] = w.reshape(-1)
        packed[i, ..., -2], packed[i, ..., -1] = masks[size]
    inputs = [jpeg[..., None], (qualities / 100.0).astype(np.float32)[:, None],
              (sizes / codec.SIZE).astype(np.float32)[:, None]]
    return inputs, packed, np.ones(n, np.float32)


def _plot_curves(log: list[dict[str, Any]], primary: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(epochs, [r["train_loss"] for r in log], "o-", label="training loss (all qualities, weighted)")
    axes[0].plot(epochs, [r["val"][str(primary)]["model"]["mse"] for r in log], "s-", label=f"validation MSE, q{primary}")
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    for ax, key, unit in ((axes[1], "psnr", "dB"), (axes[2], "ssim", "")):
        for q in log[0]["val"]:
            line = ax.plot(epochs, [r["val"][q]["model"][key] for r in log], "o-", label=f"CAE q{q}")
            ax.axhline(log[0]["val"][q]["jpeg"][key], ls="--", color=line[0].get_color(), lw=0.8)
        ax.set_title(f"validation {key.upper()} {unit} (dashed: plain JPEG)")
    axes[2].legend(fontsize=7, ncol=2)
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def init_from(model: keras.Model, path: Path) -> None:
    """Start ``model`` from the weights in ``path``: of the same architecture, or of the one its
    model card names (blockres for deblock) when the layers match in order and a kernel differs
    only in having fewer input channels (the planes deblock adds): those start at zero, so that
    the model begins as the one it starts from."""
    card = path.with_name(path.name.removesuffix(".weights.h5") + ".json")
    source_name = json.loads(card.read_text())["model"] if card.is_file() else model.name
    if source_name == model.name:
        model.load_weights(str(path))
        return
    source = build(source_name)
    source.load_weights(str(path))
    src, dst = source.get_weights(), model.get_weights()
    if (deeper := _deepened(src, dst)) is not None:
        model.set_weights(deeper)
        return
    if len(src) != len(dst):
        raise ValueError(f"cannot start {model.name} from {source_name} weights: {len(src)} arrays, {len(dst)} needed")
    out = []
    for a, b in zip(src, dst):
        if a.shape == b.shape:
            out.append(a)
        elif a.ndim == 4 and a.shape[:2] + a.shape[3:] == b.shape[:2] + b.shape[3:] and a.shape[2] < b.shape[2]:
            wide = np.zeros_like(b)
            wide[:, :, : a.shape[2], :] = a
            out.append(wide)
        else:
            raise ValueError(f"cannot start {model.name} from {source_name} weights: {a.shape} against {b.shape}")
    model.set_weights(out)


def _deepened(src: list[np.ndarray], dst: list[np.ndarray]) -> list[np.ndarray] | None:
    """The weights of a deeper stack of convolutions (deblock-deep) from a shallower one's
    (deblock), when they differ only in more square convolutions before the last: those start
    as the identity (the centre tap passes each channel on, no bias; their input has been
    through a ReLU, so the ReLU after them changes nothing), so the model begins as the one it
    starts from. None when the shapes do not fit that."""
    extra = len(dst) - len(src)
    if extra <= 0 or extra % 2 or len(src) < 4:
        return None
    head, tail = src[:-2], src[-2:]
    middle = dst[len(head) : len(head) + extra]
    if [a.shape for a in head + tail] != [b.shape for b in dst[: len(head)] + dst[-2:]]:
        return None
    if any(k.ndim != 4 or k.shape[2] != k.shape[3] or b.shape != (k.shape[3],) for k, b in zip(middle[::2], middle[1::2])):
        return None
    identity = []
    for k, b in zip(middle[::2], middle[1::2]):
        eye = np.zeros_like(k)
        eye[k.shape[0] // 2, k.shape[1] // 2] = np.eye(k.shape[2], dtype=k.dtype)
        identity += [eye, np.zeros_like(b)]
    return head + identity + tail


def _save_inference_weights(model: keras.Model, name: str, path: Path) -> None:
    """Save the layers' weights only: a compiled model would also save the optimizer's state."""
    clean = build(name)
    clean.set_weights(model.get_weights())
    clean.save_weights(str(path))


def _device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU x{len(gpus)}" if gpus else f"CPU ({platform.processor() or platform.machine()})"


def train(cfg: TrainConfig) -> Path:
    """Train ``cfg.model``; write weights, model card, log and curves to ``cfg.out_dir``.

    Returns the path of the final weights (named ``<model>-<sha8>.weights.h5``).
    Raises ValueError when training and validation data share a patient or series.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.precision != "float32" and cfg.model in ARCHITECTURES and not ARCHITECTURES[cfg.model].bfloat16:
        raise ValueError(f"model {cfg.model!r} trains in float32 only")
    if not cfg.mixed_precision:
        return _train(cfg, out)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(cfg, out)
    finally:  # models loaded later in this process compute as they say again
        keras.mixed_precision.set_global_policy("float32")


def _train(cfg: TrainConfig, out: Path) -> Path:
    rng = np.random.default_rng(cfg.seed)

    print(f"loading training data from {', '.join(cfg.train_dirs)}", flush=True)
    train_set = dataset.load(list(cfg.train_dirs), mapping=cfg.value_mapping)
    print(f"loading validation data from {', '.join(cfg.val_dirs)}", flush=True)
    val_set = dataset.load(list(cfg.val_dirs), mapping=cfg.value_mapping)
    dataset.check_disjoint(train_set, val_set)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError("no usable images in the training or the validation data")
    print(
        f"{len(train_set)} training images ({len(set(train_set.patients))} patients), "
        f"{len(val_set)} validation images ({len(set(val_set.patients))} patients); "
        f"device {_device()}",
        flush=True,
    )

    model = build(cfg.model, precision=cfg.precision)
    if cfg.init_weights:
        init_from(model, Path(cfg.init_weights))
    uses_quality = ARCHITECTURES[cfg.model].uses_quality
    reader = ARCHITECTURES[cfg.model].uses_coding
    steps = math.ceil(len(train_set) * cfg.repeats / cfg.batch_size) * cfg.epochs
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps, alpha=0.05)
    base_loss = cfg.loss or ("bce" if cfg.model == "seed" else "mse")
    loss = (make_reader_loss(cfg.display_weight, cfg.block_weight, cfg.blockiness_weight) if reader
            else make_loss(cfg.ssim_weight, base_loss))
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=1.0), loss=loss)
    windows = _loss_windows(train_set) if reader else None
    recon = from_model(model, cfg.model)

    def reconstruct(x: np.ndarray, q: int) -> np.ndarray:
        return recon(x, q, batch_size=cfg.batch_size, coding_size=cfg.coding_size)

    primary = 10 if 10 in cfg.val_qualities else cfg.val_qualities[0]
    log: list[dict[str, Any]] = []
    log_path = out / "log.jsonl"
    log_path.write_text("")
    started = time.time()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        if reader:
            x, y, weight = _reader_epoch_inputs(train_set.images, windows, cfg, rng)
        else:
            jpeg, qn, target, weight = _epoch_inputs(train_set.images, cfg, rng)
            x = [jpeg[..., None], qn[:, None]] if uses_quality else jpeg[..., None]
            y = target[..., None]
        hist = model.fit(
            x, y, sample_weight=weight, batch_size=cfg.batch_size, epochs=1, shuffle=True,
            verbose=1 if sys.stdout.isatty() else 0,
        )
        train_loss = float(hist.history["loss"][-1])
        val = evaluation.compare(val_set.images, list(cfg.val_qualities), reconstruct, coding_size=cfg.coding_size)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "seconds": round(time.time() - t0, 1),
            "val": {str(q): {k: s.as_dict() for k, s in v.items()} for q, v in val.items()},
        }
        log.append(record)
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"epoch {epoch}/{cfg.epochs}  train loss {train_loss:.6f}  ({record['seconds']} s)", flush=True)
        print(_table(val), flush=True)
        _save_inference_weights(model, cfg.model, out / f"{cfg.model}.last.weights.h5")

    validation = _validation(val_set, reconstruct, cfg.coding_size, reader, edge_filter=ARCHITECTURES[cfg.model].edge_filter)
    tmp = out / f"{cfg.model}.last.weights.h5"
    digest = sha256_of(tmp)
    final = out / f"{cfg.model}-{digest[:8]}.weights.h5"
    shutil.copyfile(tmp, final)
    _plot_curves(log, primary, out / "curves.png")
    card = {
        "model": cfg.model,
        "description": ARCHITECTURES[cfg.model].description,
        "parameters": int(model.count_params()),
        "weights_file": final.name,
        "sha256": digest,
        "data": {
            "train": list(cfg.train_dirs),
            "val": list(cfg.val_dirs),
            "train_images": len(train_set),
            "val_images": len(val_set),
            "train_patients": len(set(train_set.patients)),
            "val_patients": len(set(val_set.patients)),
            "split": "patient level: no patient or series is in both sets (checked)",
            "value_mapping": cfg.value_mapping,
        },
        **({"coding_size": cfg.coding_size} if cfg.coding_size != codec.SIZE else {}),
        "training": {
            "epochs": cfg.epochs,
            "passes_per_epoch": cfg.repeats,
            "batch_size": cfg.batch_size,
            "sample_weights": "none (the loss is in dB)" if reader else "1 / sqrt(max(MSE of the JPEG decode, 1e-4)), mean 1",
            "optimizer": f"Adam (clipnorm 1), cosine decay from {cfg.learning_rate}",
            "loss": (f"in dB (log of each error, floor 1e-6): MSE on [0,1] images + {cfg.display_weight} x mean MSE in "
                     f"the {LOSS_WINDOWS} narrowest display windows (the source's; for CT also brain C40/W80 and soft "
                     f"tissue C40/W400) + {cfg.block_weight} x MSE of the steps across block edges in the narrowest window"
                     + (f" + {cfg.blockiness_weight} x (log blockiness - log the original's blockiness)^2 there"
                        if cfg.blockiness_weight else "")) if reader else
            ("binary cross-entropy" if base_loss == "bce" else "MSE")
            + (f" + {cfg.ssim_weight} * (1 - SSIM)" if cfg.ssim_weight > 0 else "") + " on [0,1] images",
            "jpeg_qualities": (f"{cfg.quality_min}-{cfg.quality_max}, log-uniform" if reader else
                               list(cfg.train_qualities) if uses_quality or len(cfg.train_qualities) > 1 else cfg.train_qualities[0]),
            **({"coding_sizes": f"{', '.join(map(str, codec.CODING_SIZES))} (256 half of the time)"} if reader else {}),
            "jpeg_encoder": codec.DEFAULT_ENCODER,
            "augmentation": "flips and transposes" if cfg.augment else "none",
            "device": _device(),
            **({"precision": f"{recon.precision} (float32 weights)"} if recon.precision != "float32" else {}),
            "seconds": round(time.time() - started),
            "seed": cfg.seed,
            **({"init_weights": f"{Path(cfg.init_weights).name} (sha256 {sha256_of(cfg.init_weights)[:12]})"}
               if cfg.init_weights else {}),
        },
        **({"decoder": note} if (note := decoder_note(cfg.model)) else {}),
        "validation": validation,
        "validated_in": recon.precision,  # the precision the validation figures were computed in
        "software": {
            "dicom_cae": dicom_cae.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / f"{cfg.model}-{digest[:8]}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"weights: {final}\nmodel card: {final.with_name(final.name.removesuffix('.weights.h5') + '.json')}")
    return final


def decoder_note(model: str) -> str | None:
    """What a card says of the decoding around the model that its figures include: the mean over
    flips of the input (reconstructor.FLIPS) and the block-edge filter; None for the model alone."""
    arch = ARCHITECTURES[model]
    if arch.flips == 1 and not arch.edge_filter:
        return None
    text = "the model's output"
    if arch.flips > 1:
        text = f"the mean of the model's outputs over {', '.join(FLIP_NAMES[: arch.flips])} (each flipped back)"
    if arch.edge_filter:
        text += (", then its block edges smoothed (codec.smooth_block_edges, "
                 f"{codec.EDGE_FILTER_ID}: limit {codec.edge_strength(codec.SIZE):g} quantizer step at codings 256 to 160, "
                 f"{codec.edge_strength(128):g} at 128, the step capped at {codec.EDGE_STEP_CAP})")
    return text + "; the validation figures include it"


def _validation(val_set: dataset.ImageSet, reconstruct: Any, coding_size: int, reader: bool, *,
                edge_filter: bool = False) -> dict[str, Any]:
    """A model card's validation: the seed's metrics by quality, and for models told the coding
    size what a reader sees of what the pipeline stores (evaluation.reader_table)."""
    print("final validation at JPEG qualities " + ", ".join(map(str, CARD_QUALITIES)), flush=True)
    final_val = evaluation.compare(val_set.images, list(CARD_QUALITIES), reconstruct, coding_size=coding_size)
    print(_table(final_val), flush=True)
    reader_val = evaluation.reader_table(val_set, list(CARD_QUALITIES), reconstruct, edge_filter=edge_filter) if reader else None
    return {
        "pixel_accuracy_tolerance": metrics.PIXEL_TOLERANCE,
        "by_quality": {str(q): {k: s.as_dict() for k, s in v.items()} for q, v in final_val.items()},
        **({"reader_by_quality": reader_val,
            "reader_note": "means over the validation images: worst display window PSNR/SSIM, most blocking window's "
                           "blockiness (x the original's), seed's PSNR; 'model' is what the pipeline stores (JPEG + w x "
                           "correction, never below plain JPEG), model_used the share with w > 0"} if reader_val else {}),
    }


def revalidate(card_path: Path, root: Path) -> dict[str, Any]:
    """Measure a card's weights again on the card's own validation folders (relative to
    ``root``, the project's folder) with today's decoding, and write the card's validation
    (and its decoder note) anew; the weights and the training record stay as they are."""
    from dicom_cae.model.reconstructor import load

    card = json.loads(card_path.read_text())
    val_set = dataset.load([str(root / d) for d in card["data"]["val"]], mapping=card["data"]["value_mapping"])
    recon = load(card["model"], weights=card_path.with_name(card["weights_file"]))
    coding_size = int(card.get("coding_size", codec.SIZE))

    def reconstruct(x: np.ndarray, q: int) -> np.ndarray:
        return recon(x, q, coding_size=coding_size)

    card["validation"] = _validation(val_set, reconstruct, coding_size, ARCHITECTURES[card["model"]].uses_coding,
                                     edge_filter=ARCHITECTURES[card["model"]].edge_filter)
    if note := decoder_note(card["model"]):
        card["decoder"] = note
    card["validated_in"] = recon.precision
    card["validated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


def _table(val: dict[int, dict[str, evaluation.Summary]]) -> str:
    rows = ["  q   ratio    PSNR jpeg/cae      SSIM jpeg/cae    pixacc jpeg/cae"]
    for q, v in val.items():
        j, m = v["jpeg"], v["model"]
        rows.append(
            f"{q:3d}  {j.compression_ratio:.4f}  {j.psnr:6.2f} / {m.psnr:6.2f}  "
            f"{j.ssim:.4f} / {m.ssim:.4f}  {j.pixel_accuracy:.4f} / {m.pixel_accuracy:.4f}"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # python -m dicom_cae.model.train revalidate CARD.json (from the project's folder)
    if len(sys.argv) != 3 or sys.argv[1] != "revalidate":
        sys.exit("usage: python -m dicom_cae.model.train revalidate CARD.json")
    revalidate(Path(sys.argv[2]), Path.cwd())
