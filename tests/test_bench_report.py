"""What `temde bench pool` prints around its measurements: ratios only between token counts it measured, and a
warning where the timings contradict each other."""
import pytest

from temde.bench.pool import summarise
from temde.cli.bench import timing_warnings


def row(pool, tokens, forward, forward_backward, group="sweep"):
    return {"group": group, "pool": pool, "batch": 2, "tokens": tokens, "dim": 8, "dtype": "float32",
            "forward_ms": forward, "forward_backward_ms": forward_backward, "saved_for_backward_mb": 1.0,
            "cuda_peak_mb": None}


def test_long_sequence_ratios_need_a_longer_l_than_512_in_the_sweep():
    up_to_512 = [row("temde", 36, 1.0, 2.0), row("temde", 512, 4.0, 8.0)]
    assert not any("over_L512" in key for key in summarise(up_to_512)["float32"])
    without_512 = [row("temde", 36, 1.0, 2.0), row("temde", 1024, 4.0, 8.0)]
    assert not any("L512" in key for key in summarise(without_512)["float32"])
    longer = up_to_512 + [row("temde", 2048, 10.0, 20.0)]
    assert summarise(longer)["float32"]["temde_forward_time_L2048_over_L512"] == pytest.approx(10.0 / 4.0)


def test_a_forward_slower_than_forward_backward_is_called_noise():
    rows = [row("mha", 36, 25.5, 24.2), row("temde", 36, 1.0, 3.0), {"group": "sweep", "pool": "mha", "tokens": 9,
                                                                       "dtype": "float32", "error": "out of memory"}]
    warnings = timing_warnings(rows, repeats=3)
    assert len(warnings) == 1
    assert "mha L=36 float32 (25.50 > 24.20 ms)" in warnings[0] and "--repeats 3" in warnings[0]
    assert "temde" not in warnings[0]
    assert timing_warnings([row("temde", 36, 1.0, 3.0)], repeats=5) == []
