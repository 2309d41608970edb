"""Node settings: defaults, a TOML file, then command-line overrides."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_cae import mapping as value_mapping
from dicom_cae.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_QUALITY

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A setting that is missing, of the wrong type or out of range; names the setting."""


@dataclass(frozen=True)
class TLSConfig:
    cert: str  # PEM certificate chain of this node
    key: str  # PEM private key
    ca: str | None = None  # PEM CA bundle to verify clients against
    require_client_cert: bool = False


@dataclass(frozen=True)
class ForwardConfig:
    ae_title: str  # the destination's AE title
    host: str
    port: int
    calling_ae_title: str | None = None  # default: the node's own AE title
    retry_initial_s: float = 5.0
    retry_max_s: float = 300.0


@dataclass(frozen=True)
class Config:
    ae_title: str = "DICOM_CAE"
    bind: str = "127.0.0.1"
    port: int = 11112
    data_dir: str = "dicom-cae-data"
    # processing
    quality: int = DEFAULT_QUALITY
    target_psnr: float | None = None  # instead of quality: the lowest quality reaching it
    target_ssim: float | None = None
    target_ratio: float | None = None  # instead of quality: coding size and quality within this byte budget
    target_on: str = "display"  # where the target is measured: worst display window, or "seed" (min/max)
    value_mapping: str = value_mapping.DEFAULT  # window, or minmax (the seed's): see dicom_cae.mapping
    model: str | None = None
    weights: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_wait_s: float = 1.0
    study_quiet_s: float = 30.0
    workers: int = 0  # N > 0: process in N local processes (each loads the model once); 0: in the node's process
    dask: str | None = None  # tcp://HOST:PORT: process on this Dask cluster's workers (same paths to data_dir)
    # access and limits
    allowed_aets: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    require_called_aet: bool = False  # reject associations that call another AE title than ours
    max_associations: int = 10
    max_pdu: int = 262_144
    max_instance_bytes: int = 2 * 1024**3
    tls: TLSConfig | None = None
    forward: ForwardConfig | None = None
    # operations
    http_port: int | None = None
    http_bind: str = "127.0.0.1"
    log_format: str = "text"  # or "json"

    @property
    def spool_dir(self) -> Path:
        return Path(self.data_dir) / "spool"

    @property
    def output_dir(self) -> Path:
        return Path(self.data_dir) / "output"

    @property
    def kept_dir(self) -> Path:
        return Path(self.data_dir) / "kept"

    @property
    def failed_dir(self) -> Path:
        return Path(self.data_dir) / "failed"

    @property
    def originals_dir(self) -> Path:
        """Processed originals, kept until their study's report shows them beside the derived images."""
        return Path(self.data_dir) / "originals"

    @property
    def conflicts_dir(self) -> Path:
        return Path(self.data_dir) / "conflicts"

    @property
    def state_path(self) -> Path:
        return Path(self.data_dir) / "state.sqlite"


def _check_ae(name: str, value: str) -> None:
    if not value or len(value) > 16 or not value.isascii() or "\\" in value or value != value.strip():
        raise ConfigError(f"{name}: an AE title is 1-16 ASCII characters without backslash, got {value!r}")


def validate(cfg: Config) -> Config:
    """Return ``cfg`` if every setting is usable, else raise ConfigError naming the first bad one."""
    _check_ae("ae_title", cfg.ae_title)
    for aet in cfg.allowed_aets:
        _check_ae("allowed_aets", aet)
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port: must be 0-65535, got {cfg.port}")
    if cfg.http_port is not None and not 0 <= cfg.http_port <= 65535:
        raise ConfigError(f"http_port: must be 0-65535, got {cfg.http_port}")
    if not 1 <= cfg.quality <= 100:
        raise ConfigError(f"quality: must be 1-100, got {cfg.quality}")
    for name in ("batch_size", "max_associations", "max_instance_bytes"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_pdu != 0 and cfg.max_pdu < 4096:
        raise ConfigError(f"max_pdu: must be 0 (unlimited) or at least 4096, got {cfg.max_pdu}")
    for name in ("batch_wait_s", "study_quiet_s"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}: must not be negative")
    if cfg.workers < 0:
        raise ConfigError(f"workers: 0 (in the node) or more, got {cfg.workers}")
    if cfg.workers and cfg.dask:
        raise ConfigError("workers and dask exclude each other")
    if cfg.dask is not None and "://" not in cfg.dask:
        raise ConfigError(f"dask: a scheduler address such as tcp://HOST:8786, got {cfg.dask!r}")
    if cfg.value_mapping not in value_mapping.NAMES:
        raise ConfigError(f"value_mapping: one of {', '.join(map(repr, value_mapping.NAMES))}, got {cfg.value_mapping!r}")
    if cfg.target_ratio is not None and not 0 < cfg.target_ratio <= 1:
        raise ConfigError(f"target_ratio: a compression ratio in (0, 1], got {cfg.target_ratio}")
    if cfg.target_ratio is not None and (cfg.target_psnr or cfg.target_ssim):
        raise ConfigError("target_ratio and target_psnr/target_ssim exclude each other")
    if cfg.target_on not in ("display", "seed"):
        raise ConfigError(f"target_on: 'display' or 'seed', got {cfg.target_on!r}")
    if cfg.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: 'text' or 'json', got {cfg.log_format!r}")
    if cfg.tls is not None:
        for name in ("cert", "key", "ca"):
            path = getattr(cfg.tls, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"tls.{name}: file not found: {path}")
        if cfg.tls.require_client_cert and not cfg.tls.ca:
            raise ConfigError("tls.require_client_cert needs tls.ca to verify client certificates against")
    if cfg.forward is not None:
        _check_ae("forward.ae_title", cfg.forward.ae_title)
        if not 1 <= cfg.forward.port <= 65535:
            raise ConfigError(f"forward.port: must be 1-65535, got {cfg.forward.port}")
    return cfg


#: What a TOML value must be for each kind of setting (the dataclasses' annotations, as text).
_KINDS = {
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "tuple[str, ...]": ("a list of strings, e.g. [\"CT01\"]",
                        lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)),
    "TLSConfig": ("a table ([tls])", lambda v: isinstance(v, dict)),
    "ForwardConfig": ("a table ([forward])", lambda v: isinstance(v, dict)),
}


def _check_kind(where: str, name: str, value: Any, annotation: str) -> Any:
    """``value`` if it is of the setting's kind (a number for a float is made a float), else
    ConfigError naming the setting, what it must be and what it got. A string is never read as
    a list: ``allowed_aets = "CT01"`` is an error, not the titles C, T, 0 and 1."""
    kind = annotation.replace(" | None", "")
    what, ok = _KINDS[kind]
    if not ok(value):
        raise ConfigError(f"{where}: {name} must be {what}, got {value!r} ({type(value).__name__})")
    return float(value) if kind == "float" else value


def _build(cls: type, values: dict[str, Any], where: str, prefix: str = "") -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(prefix + u for u in sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        value = _check_kind(where, prefix + name, value, str(fields[name].type))
        if name == "tls":
            value = _build(TLSConfig, value, where, "tls.") if value else None
        elif name == "forward":
            value = _build(ForwardConfig, value, where, "forward.") if value else None
        elif name in ("allowed_aets", "allowed_hosts"):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load(path: str | Path | None = None, **overrides: Any) -> Config:
    """Defaults, updated from the TOML file at ``path`` (if any), then by non-None ``overrides``.

    Raises ConfigError for an unreadable file, an unknown or invalid setting.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    return validate(_build(Config, values, str(path or "settings")))


EXAMPLE = f"""\
# dicom-cae serve settings (every key is optional; these are the defaults)
ae_title = "DICOM_CAE"
bind = "127.0.0.1"          # "0.0.0.0" to accept associations from the network
port = 11112
data_dir = "dicom-cae-data" # spool/, output/, kept/, failed/, state.sqlite

quality = {DEFAULT_QUALITY:<18}# JPEG quality 1-100 (the scale of the quantization table)
# target_psnr = 38.0        # instead: per image, the lowest quality whose reconstruction reaches it
# target_ssim = 0.95
# target_ratio = 0.0093    # instead: per image, size and quality within this compression ratio
target_on = "display"       # target measured in the worst display window, or "seed" (min/max image)
value_mapping = "{value_mapping.DEFAULT}"    # how values become the image JPEG codes: window, or minmax (the seed's)
# model = "blockres"        # see 'dicom-cae models'
# weights = "path/to/file.weights.h5"
batch_size = {DEFAULT_BATCH_SIZE}
batch_wait_s = 1.0          # wait this long for a batch to fill
study_quiet_s = 30.0        # a study is complete after this long without new instances
# workers = 2               # process in 2 local processes, each with the model (default: in the node)
# dask = "tcp://127.0.0.1:8786"  # or on a Dask cluster whose workers see data_dir at the same path

allowed_aets = []           # calling AE titles allowed; empty: any
allowed_hosts = []          # peer IP addresses allowed; empty: any
require_called_aet = false  # true: reject associations that call another AE title than ae_title
max_associations = 10
max_pdu = 262144
max_instance_bytes = 2147483648

# http_port = 8080          # /health and /metrics (Prometheus)
http_bind = "127.0.0.1"
log_format = "text"         # or "json"

# [tls]
# cert = "node.pem"
# key = "node.key"
# ca = "ca.pem"
# require_client_cert = true

# [forward]
# ae_title = "PACS"
# host = "127.0.0.1"
# port = 4242
# retry_initial_s = 5.0
# retry_max_s = 300.0
"""
