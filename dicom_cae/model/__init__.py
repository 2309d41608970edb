"""The models: architectures, shipped weights, inference and training.

This package is the only one in dicom_cae that imports TensorFlow/Keras.
"""

from __future__ import annotations

import os

# oneDNN roughly doubles batched CPU inference on the CPUs we run on; it must be set
# before TensorFlow is imported. Quiet TensorFlow's start-up chatter unless asked.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


#: What to do when no TensorFlow is installed (it comes with an extra: one distribution, never two).
NO_TENSORFLOW = ("TensorFlow is not installed; the model needs it. Install dicom-cae with the TensorFlow for "
                 "this machine: pip install 'dicom-cae[cpu]' (or, from a checkout, pip install '.[cpu]'); on a "
                 "machine with an NVIDIA GPU, '[gpu]' instead")


def _import_tensorflow_quietly() -> None:
    """TensorFlow's C++ start-up lines go to fd 2 before any setting can silence them; hide
    them unless DICOM_CAE_TF_LOGS is set. Python errors from the import still surface; a
    missing TensorFlow is a ModelError that says which extra to install."""
    quiet = not os.environ.get("DICOM_CAE_TF_LOGS")
    if quiet:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "tensorflow":
            raise
        from dicom_cae.errors import ModelError

        raise ModelError(NO_TENSORFLOW) from None
    finally:
        if quiet:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


_import_tensorflow_quietly()

from dicom_cae.model.architectures import ARCHITECTURES, build  # noqa: E402
from dicom_cae.model.reconstructor import Reconstructor, load  # noqa: E402

__all__ = ["ARCHITECTURES", "build", "Reconstructor", "load"]
