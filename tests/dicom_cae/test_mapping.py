"""Value mappings (dicom_cae.mapping): minmax and window-aware, checked against the arithmetic
written out here."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_cae import mapping


def test_minmax_is_linear_from_the_minimum_to_the_maximum_and_clips():
    m = mapping.minmax(-1000.0, 1000.0)
    assert (m.name, m.lo, m.hi) == ("minmax", -1000.0, 1000.0)
    assert m.forward(np.array([-2000.0, -1000.0, 0.0, 500.0, 1000.0, 3000.0])).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]
    assert m.inverse(np.array([-0.5, 0.0, 0.25, 1.0, 1.5])).tolist() == [-1000.0, -1000.0, -500.0, 1000.0, 1000.0]
    flat = mapping.minmax(7.0, 7.0)  # a flat frame: a range of one unit, never zero
    assert (flat.x, flat.y) == ((7.0, 8.0), (0.0, 1.0))


@pytest.mark.parametrize("x, y", [((0.0,), (0.0,)), ((0.0, 1.0), (0.0, 0.5, 1.0)), ((0.0, 0.0), (0.0, 1.0)),
                                  ((0.0, 1.0), (1.0, 0.0)), ((1.0, 0.0), (0.0, 1.0)), ((0.0, 1.0, 2.0), (0.0, 0.5, 0.5))])
def test_a_mapping_needs_two_knots_and_strictly_increasing_values(x, y):
    with pytest.raises(ValueError):
        mapping.ValueMapping("minmax", x, y)


def test_the_names_are_checked():
    assert mapping.check("window") == "window" and mapping.DEFAULT == "window"
    with pytest.raises(ValueError, match="unknown value mapping 'gamma'; known: minmax, window"):
        mapping.check("gamma")
    with pytest.raises(ValueError):
        mapping.make("gamma", 0.0, 1.0, [])


def test_window_aware_gives_half_the_codes_to_the_widened_window():
    """Head CT, -1024..3071 HU, soft tissue C40/W400 (-160..240), widened by 25 % of its width
    on each side: -260..340. Half the codes spread over 4095 HU, the other half over those 600."""
    m = mapping.window_aware(-1024.0, 3071.0, [(-160.0, 240.0)])
    assert m.name == "window" and m.x == (-1024.0, -260.0, 340.0, 3071.0) and (m.lo, m.hi) == (-1024.0, 3071.0)
    floor = 0.5 / 4095.0
    expected = [0.0, floor * 764, floor * 1364 + 0.5, 1.0]
    assert np.allclose(m.y, expected, atol=1e-12)
    # One code step (1/255) inside the window: 6.2 HU, not minmax's 16.
    step_hu = (1 / 255) / (floor + 0.5 / 600.0)
    assert np.isclose(m.inverse(m.forward(0.0) + 1 / 255) - 0.0, step_hu)
    values = np.linspace(-1024, 3071, 97)
    assert np.allclose(m.inverse(m.forward(values)), values)


def test_two_windows_share_the_window_codes_and_overlaps_add_up():
    m = mapping.window_aware(0.0, 1000.0, [(100.0, 200.0), (150.0, 350.0)])
    # widened: 75..225 and 100..400
    assert m.x == (0.0, 75.0, 100.0, 225.0, 400.0, 1000.0)
    d_floor, d_a, d_b = 0.5 / 1000, 0.25 / 150, 0.25 / 300
    slopes = np.diff(m.y) / np.diff(m.x)
    assert np.allclose(slopes, [d_floor, d_floor + d_a, d_floor + d_a + d_b, d_floor + d_b, d_floor])


def test_windows_outside_the_frame_or_at_its_edges():
    assert mapping.window_aware(0.0, 100.0, [(500.0, 600.0)]).name == "minmax"  # nothing of it in the frame
    assert mapping.window_aware(5.0, 5.0, [(0.0, 10.0)]).name == "minmax"  # a flat frame
    clipped = mapping.window_aware(0.0, 100.0, [(-50.0, 60.0)])  # widened -77.5..87.5: clipped at 0
    assert clipped.x == (0.0, 87.5, 100.0)
    at_edge = mapping.window_aware(0.0, 100.0, [(0.0, 100.0)])  # the whole frame: one segment
    assert at_edge.x == (0.0, 100.0) and at_edge.y == (0.0, 1.0)


def test_make_and_the_recorded_knots():
    m = mapping.make("window", -100.0, 100.0, [(-10.0, 10.0)])
    again = mapping.from_knots("window", mapping.knots(m))
    assert again == m and mapping.knots(m) == [*m.x, *m.y]
    assert mapping.make("minmax", -100.0, 100.0, [(-10.0, 10.0)]) == mapping.minmax(-100.0, 100.0)
