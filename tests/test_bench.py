"""The benchmark records at tiny sizes (their structure, never their timings) and the memory meters they use."""
from __future__ import annotations

import json

import pytest
import torch

from temde.bench.timing import PeakMemory, peak_bytes, saved_for_backward_bytes
from temde.cli import main
from temde.pooling import list_pools

MB = 2 ** 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_peak_memory_counts_live_new_storages_only():
    existing = torch.zeros(1024, 1024)  # 4 MiB that exists before: never counted, nor are its views

    def work():
        a = torch.ones(512, 1024)  # 2 MiB
        b = a * 2  # +2 MiB: 4 MiB live
        view = existing.view(-1)[:10]  # a view of an old storage: nothing new
        del a  # 2 MiB live
        c = torch.cat([b, b])  # +4 MiB: 6 MiB live, the peak
        del b, c
        return view

    assert peak_bytes(work) == 6 * MB
    with PeakMemory() as tracker:
        kept = torch.ones(256, 1024)
    assert tracker.live == tracker.peak == MB and kept.numel() == 256 * 1024
    del kept
    assert tracker.live == 0


def test_saved_for_backward_can_leave_out_the_input_and_parameters():
    layer = torch.nn.Linear(256, 256)
    x = torch.randn(64, 256, requires_grad=True)

    def forward():
        return torch.tanh(layer(x))  # saves x and the weight (Linear), and tanh's output

    total = saved_for_backward_bytes(forward)
    activations = saved_for_backward_bytes(forward, [x, *layer.parameters()])
    assert activations == 64 * 256 * 4  # tanh's output only
    assert total == activations + 64 * 256 * 4 + 256 * 256 * 4


def test_pool_bench_records_every_registered_pooling(tmp_path, capsys):
    out = tmp_path / "pool.json"
    assert main(["bench", "pool", "--device", "cpu", "--dim", "16", "--host-batch", "4", "--host-tokens", "6",
                 "--sweep-batch", "2", "--sweep-tokens", "8", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    host = {row["pool"]: row for row in result["rows"] if row["group"] == "host"}
    assert set(list_pools()) <= set(host)
    for row in host.values():
        assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0
        assert 0 <= row["saved_activations_mb"] <= row["saved_for_backward_mb"]
    summary = result["summary"]["float32"]
    for name in ("temde", "gpo", "max"):
        assert f"host_activations_{name}_over_attention" in summary


def test_host_step_bench_times_each_pooling_and_sizes_the_batch(tmp_path, capsys):
    out = tmp_path / "step.json"
    pools = ["attention", "temde", "gpo"]  # every pooling in the vse host: tests/test_models.py
    assert main(["bench", "pool", "--host", "vse", "--host-model", "vse-small", "--img-dim", "12", "--embed-size",
                 "16", "--device", "cpu", "--pools", ",".join(pools), "--step-tokens", "4,8", "--step-batch", "4",
                 "--repeats", "1", "--memory-gb", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(row["pooling"], row["tokens"]): row for row in result["rows"]}
    assert set(rows) == {(p, t) for p in pools for t in (4, 8)}
    for (pooling, tokens), row in rows.items():
        assert row["step_s"] > 0 and row["step_peak_mb"] > 0 and row["memory_mb"] > row["resident_mb"] > 0
        if tokens == 8:  # the largest token count: memory per item from two batch sizes, and the batch in budget
            assert row["memory_per_item_mb"] > 0
            assert row["memory_fixed_mb"] + row["max_batch_in_budget"] * row["memory_per_item_mb"] <= 1024
    assert "L8_step_temde_over_attention" in result["summary"]
    assert "L8_step_temde_over_gpo" in result["summary"]
    printed = capsys.readouterr().out
    assert "largest batch in 1 GB" in printed


def test_host_step_bench_refuses_a_pool_outside_the_registry(tmp_path, capsys):
    assert main(["bench", "pool", "--host", "vse", "--pools", "nystrom", "--out", str(tmp_path / "x.json")]) == 2
    assert "nystrom" in capsys.readouterr().err
