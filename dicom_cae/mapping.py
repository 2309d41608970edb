"""Value mappings: how modality values (HU for CT) become the [0, 1] image that JPEG codes.

A mapping is monotonic and invertible: piecewise linear through knots (modality value -> [0, 1]),
recorded per frame in the private block so that the reconstruction, ``report`` and any reader
can undo it. 8-bit JPEG has 256 codes; the mapping decides where they go.

- ``minmax`` (the seed's): the frame's minimum to 0 and maximum to 1, linearly. On a head CT
  of -1024..3071 HU one code step is 16 HU before JPEG starts, wider than the brain's contrast.
- ``window``: half of the codes spread evenly over the frame's range, the other half shared by
  the display windows the source names (each widened by 50 % on each side, so that what lies
  just outside a window keeps detail too); for CT without a window narrower than W400 the
  soft-tissue window, for an image without any window its 1st-99th percentile range (see
  display.windows). Where windows overlap their shares add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MINMAX = "minmax"
WINDOW = "window"
NAMES = (MINMAX, WINDOW)
DEFAULT = WINDOW
#: Share of the codes spread evenly over the whole range (the rest go to the windows).
FLOOR = 0.5
#: Each window is widened by this fraction of its width on each side.
WIDEN = 0.25


@dataclass(frozen=True)
class ValueMapping:
    """Piecewise linear, strictly increasing: ``x`` (modality values) -> ``y`` ([0, 1])."""

    name: str
    x: tuple[float, ...]
    y: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or len(self.x) < 2:
            raise ValueError("a value mapping needs at least two knots, as many x as y")
        if not (np.diff(self.x) > 0).all() or not (np.diff(self.y) > 0).all():
            raise ValueError("a value mapping must be strictly increasing")

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Modality values to [0, 1] (clipped at the ends), float64."""
        return np.interp(np.asarray(values, np.float64), self.x, self.y)

    def inverse(self, unit: np.ndarray) -> np.ndarray:
        """[0, 1] back to modality values, float64."""
        return np.interp(np.clip(np.asarray(unit, np.float64), 0.0, 1.0), self.y, self.x)

    @property
    def lo(self) -> float:
        return self.x[0]

    @property
    def hi(self) -> float:
        return self.x[-1]


def check(name: str) -> str:
    """``name`` if it is a known mapping, else ValueError naming the known ones."""
    if name not in NAMES:
        raise ValueError(f"unknown value mapping {name!r}; known: {', '.join(NAMES)}")
    return name


def minmax(lo: float, hi: float) -> ValueMapping:
    return ValueMapping(MINMAX, (lo, hi if hi > lo else lo + 1.0), (0.0, 1.0))


def window_aware(lo: float, hi: float, spans: list[tuple[float, float]]) -> ValueMapping:
    """FLOOR of the codes over [lo, hi], the rest shared equally by ``spans`` (modality value
    ranges, widened here by WIDEN on each side, clipped to [lo, hi])."""
    if hi <= lo:
        return minmax(lo, hi)
    widened = []
    for a, b in spans:
        pad = WIDEN * (b - a)
        a, b = max(lo, a - pad), min(hi, b + pad)
        if b > a:
            widened.append((a, b))
    if not widened:
        return minmax(lo, hi)
    edges = np.unique(np.array([lo, hi, *(v for span in widened for v in span)], np.float64))
    # Edges closer than rounding (a window edge at the frame's minimum or maximum) would make a
    # segment too thin to keep the mapping strictly increasing: drop them, keep lo and hi.
    tol = 1e-9 * (hi - lo)
    inner = [float(e) for e in edges[1:-1] if e - lo > tol and hi - e > tol]
    edges = np.array([lo, *[e for i, e in enumerate(inner) if i == 0 or e - inner[i - 1] > tol], hi])
    mids = (edges[:-1] + edges[1:]) / 2
    density = np.full(mids.shape, FLOOR / (hi - lo))
    for a, b in widened:
        density += np.where((mids > a) & (mids < b), (1.0 - FLOOR) / len(widened) / (b - a), 0.0)
    y = np.concatenate([[0.0], np.cumsum(density * np.diff(edges))])
    y /= y[-1]
    return ValueMapping(WINDOW, tuple(float(v) for v in edges), tuple(float(v) for v in y))


def make(name: str, lo: float, hi: float, spans: list[tuple[float, float]]) -> ValueMapping:
    """The mapping ``name`` for a frame whose values run from ``lo`` to ``hi``."""
    if check(name) == MINMAX:
        return minmax(lo, hi)
    return window_aware(lo, hi, spans)


def from_knots(name: str, knots: list[float]) -> ValueMapping:
    """A mapping from its recorded knots: x1..xn then y1..yn."""
    n = len(knots) // 2
    return ValueMapping(name, tuple(knots[:n]), tuple(knots[n:]))


def knots(m: ValueMapping) -> list[float]:
    return [*m.x, *m.y]
