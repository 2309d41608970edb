"""Engines run the runner's batches: in this process, in local processes, on a Dask cluster.

An engine is a class registered under the entry point group ``dicom_cae.engines`` (see
pyproject.toml); a new engine is one module and one line there. It is made as
``Engine(settings, **options)`` and says itself how many batches to keep in flight
(``slots``), how many stage threads a batch gets (``threads``), and whether a failure lost a
worker (``lost_worker``: the driver then runs that batch's instances one by one, so that an
instance that kills its worker fails alone).
"""

from __future__ import annotations

from concurrent.futures import Future
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from dicom_cae.runner import Settings

GROUP = "dicom_cae.engines"


class Engine:
    """Runs batches. ``submit`` returns a future (``result()`` gives the value or raises)."""

    name = "engine"
    slots = 1  # batches worth keeping in flight
    threads = 2  # stage threads inside one batch

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        raise NotImplementedError

    def lost_worker(self, exc: BaseException) -> bool:
        """Whether ``exc`` (from a future of this engine) means a worker died running the batch."""
        return False

    def close(self) -> None:
        pass

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def available() -> dict[str, Callable[..., Engine]]:
    """The engines installed, by name (loaded only when asked for)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def create(name: str, settings: Settings, **options: Any) -> Engine:
    """The engine called ``name``, made for ``settings``.

    Raises ValueError for a name no installed engine has.
    """
    found = available()
    if name not in found:
        raise ValueError(f"no engine called {name!r}; installed: {', '.join(sorted(found)) or 'none'} "
                         "(engines register under the entry point group dicom_cae.engines)")
    return found[name].load()(settings, **options)


def engine_for(settings: Settings, *, workers: int = 0, dask: str | None = None, nice: int = 0,
               threads: int = 2) -> Engine:
    """The engine a command's options ask for: a Dask scheduler's address, N local processes
    (at this niceness), or this process (``threads`` stage threads)."""
    if dask:
        return create("dask", settings, address=dask)
    if workers and workers > 0:
        return create("processes", settings, workers=workers, nice=nice)
    return create("in-process", settings, threads=threads)
