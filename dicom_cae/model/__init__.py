"""The models: architectures, shipped weights, inference and training.

This package is the only one in dicom_cae that imports TensorFlow/Keras.
"""

from __future__ import annotations

import os

# oneDNN roughly doubles batched CPU inference on the CPUs we run on; it must be set
# before TensorFlow is imported. Quiet TensorFlow's start-up chatter unless asked.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly() -> None:
    """TensorFlow's C++ start-up lines go to fd 2 before any setting can silence them; hide
    them unless DICOM_CAE_TF_LOGS is set. Python errors from the import still surface."""
    if os.environ.get("DICOM_CAE_TF_LOGS"):
        import tensorflow  # noqa: F401

        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()

from dicom_cae.model.architectures import ARCHITECTURES, build  # noqa: E402
from dicom_cae.model.reconstructor import Reconstructor, load  # noqa: E402

__all__ = ["ARCHITECTURES", "build", "Reconstructor", "load"]
