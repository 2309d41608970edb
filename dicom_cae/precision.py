"""The precision the models compute in on this machine, decided without TensorFlow (the
settings are decided before any model loads, in processes that never load one).

float32, unless DICOM_CAE_PRECISION says bfloat16, or says auto (or nothing) and the CPU has
bfloat16 units and no NVIDIA GPU is present. Which models run in it: reconstructor.choose_precision.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

PRECISIONS = ("float32", "bfloat16")
#: The environment variable that sets it: float32, bfloat16 or auto (unset: auto).
PRECISION_VARIABLE = "DICOM_CAE_PRECISION"
#: CPU flags (/proc/cpuinfo) of bfloat16 arithmetic units.
BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (/proc/cpuinfo; none where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def gpu_present() -> bool:
    """An NVIDIA GPU this process may use: the driver lists one and CUDA_VISIBLE_DEVICES does not
    hide them all (read without starting TensorFlow's GPU runtime)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def resolve(setting: str | None = None, *, flags: frozenset[str] | None = None, gpu: bool | None = None) -> str:
    """float32 or bfloat16 here, for models that can run in bfloat16: ``setting`` (default: the
    environment variable) when it names one, else bfloat16 where the CPU has bfloat16 units and
    no GPU is present.

    Raises:
        ModelError: a setting other than float32, bfloat16 or auto.
    """
    from dicom_cae.errors import ModelError

    setting = (os.environ.get(PRECISION_VARIABLE, "") if setting is None else setting).strip().lower() or "auto"
    if setting not in (*PRECISIONS, "auto"):
        raise ModelError(f"{PRECISION_VARIABLE}={setting!r}: expected float32, bfloat16 or auto")
    if setting != "auto":
        return setting
    flags = cpu_flags() if flags is None else flags
    gpu = gpu_present() if gpu is None else gpu
    return "bfloat16" if not gpu and any(f in flags for f in BFLOAT16_CPU_FLAGS) else "float32"
