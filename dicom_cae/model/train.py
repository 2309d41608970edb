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
from dicom_cae.model.reconstructor import from_model, sha256_of

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
    init_weights: str | None = None
    ssim_weight: float = 0.005
    repeats: int = 1
    loss: str | None = None  # "mse" or "bce"; default: "bce" for sigmoid outputs (seed), else "mse"
    value_mapping: str = "minmax"  # how modality values become the [0, 1] images (dicom_cae.mapping)
    coding_size: int = codec.SIZE  # JPEG of the image reduced to this size, decoded and upsampled (bicubic) to 256


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
    rng = np.random.default_rng(cfg.seed)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

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

    model = build(cfg.model)
    if cfg.init_weights:
        model.load_weights(cfg.init_weights)
    uses_quality = ARCHITECTURES[cfg.model].uses_quality
    steps = math.ceil(len(train_set) * cfg.repeats / cfg.batch_size) * cfg.epochs
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps, alpha=0.05)
    base_loss = cfg.loss or ("bce" if cfg.model == "seed" else "mse")
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=1.0), loss=make_loss(cfg.ssim_weight, base_loss))
    recon = from_model(model, cfg.model)

    def reconstruct(x: np.ndarray, q: int) -> np.ndarray:
        return recon(x, q, batch_size=cfg.batch_size)

    primary = 10 if 10 in cfg.val_qualities else cfg.val_qualities[0]
    log: list[dict[str, Any]] = []
    log_path = out / "log.jsonl"
    log_path.write_text("")
    started = time.time()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        jpeg, qn, target, weight = _epoch_inputs(train_set.images, cfg, rng)
        x = [jpeg[..., None], qn[:, None]] if uses_quality else jpeg[..., None]
        hist = model.fit(
            x, target[..., None], sample_weight=weight, batch_size=cfg.batch_size, epochs=1, shuffle=True,
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

    print("final validation at JPEG qualities " + ", ".join(map(str, CARD_QUALITIES)), flush=True)
    final_val = evaluation.compare(val_set.images, list(CARD_QUALITIES), reconstruct, coding_size=cfg.coding_size)
    print(_table(final_val), flush=True)
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
            "sample_weights": "1 / sqrt(max(MSE of the JPEG decode, 1e-4)), mean 1",
            "optimizer": f"Adam (clipnorm 1), cosine decay from {cfg.learning_rate}",
            "loss": ("binary cross-entropy" if base_loss == "bce" else "MSE")
            + (f" + {cfg.ssim_weight} * (1 - SSIM)" if cfg.ssim_weight > 0 else "") + " on [0,1] images",
            "jpeg_qualities": list(cfg.train_qualities) if uses_quality or len(cfg.train_qualities) > 1 else cfg.train_qualities[0],
            "augmentation": "flips and transposes" if cfg.augment else "none",
            "device": _device(),
            "seconds": round(time.time() - started),
            "seed": cfg.seed,
        },
        "validation": {
            "pixel_accuracy_tolerance": metrics.PIXEL_TOLERANCE,
            "by_quality": {str(q): {k: s.as_dict() for k, s in v.items()} for q, v in final_val.items()},
        },
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


def _table(val: dict[int, dict[str, evaluation.Summary]]) -> str:
    rows = ["  q   ratio    PSNR jpeg/cae      SSIM jpeg/cae    pixacc jpeg/cae"]
    for q, v in val.items():
        j, m = v["jpeg"], v["model"]
        rows.append(
            f"{q:3d}  {j.compression_ratio:.4f}  {j.psnr:6.2f} / {m.psnr:6.2f}  "
            f"{j.ssim:.4f} / {m.ssim:.4f}  {j.pixel_accuracy:.4f} / {m.pixel_accuracy:.4f}"
        )
    return "\n".join(rows)
