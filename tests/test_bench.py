"""The benchmark plumbing on the tiny model: what it measures, and the baselines it keeps."""

import resource

import pytest
import torch

from bench.inversion import bench_inversion
from bench.measure import measure, spread, spread_text
from bench.p2p import bench_p2p, spread_pairs

CPU = torch.device("cpu")


def test_measure_sees_a_short_peak_and_cpu_time():
    with measure(CPU) as m:
        block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
        block.add_(1)
        del block
    assert m.peak_mb > 48
    assert m.seconds > 0 and m.cpu_seconds > 0


def test_spread():
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert spread_text([1.0, 3.0, 2.0]) == "2.0 (1.0–3.0)" and spread_text([1.5]) == "1.5"


def test_inversion_keeps_the_trainable_baseline():
    rows, cost = bench_inversion("tiny", 2, CPU, torch.float32, inner_steps=2, repeats=2)
    assert [r["method"] for r in rows] == ["ddim", "negative-prompt", "null-text", "direct", "fixed-point (K=5)",
                                           "fixed-point, DCI anchor λ=2 (K=5)",
                                           "null-text, trainable weights (baseline)"]
    assert rows[2]["unet_backward"] == rows[6]["unet_backward"] > 0
    direct = rows[3]
    assert direct["unet_forward"] == 2 * 2 and direct["unet_backward"] == 0  # DDIM inversion + one guided pass
    assert direct["latent_mse"] < 1e-8 < rows[0]["latent_mse"]  # the offsets land the source row on z_0
    assert 0 < rows[4]["unet_backward"] <= 2 * 5
    for key in ("direct_to_null_text", "fixed_point_to_null_text", "edit_direct_to_null_text"):
        assert "(" in cost[key]  # median (min–max) over the two interleaved repeats
    assert cost["nulls_max_diff"] == 0.0  # frozen or not, the same embeddings
    assert cost["weight_grads_mb_baseline"] > 1  # the baseline really computed weight gradients
    assert cost["repeats"] == 2 and "(" in cost["ratio_to_baseline"]


def test_p2p_refuses_too_few_steps_for_self_attention_injection():
    with pytest.raises(SystemExit, match="at least 3 steps"):
        bench_p2p("tiny", 2, 1, CPU, torch.float32)


def test_p2p_pairs_spread_over_fresh_processes():
    row = bench_p2p("tiny", 3, 3, CPU, torch.float32, processes=2)
    assert row["repeats"] == 3 and row["processes"] == 2
    assert row["ratio_cpu_min"] <= row["ratio_cpu"] <= row["ratio_cpu_max"]
    assert row["seconds_edit"] > 0 and row["seconds_plain"] > 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    plain, edited = spread_pairs("tiny", 3, 3, CPU, torch.float32, processes=5)  # more processes than pairs
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert len(plain) == len(edited) == 3 and all(m.cpu_seconds > 0 for m in plain + edited)
    # the runs' CPU time was spent in child processes, not in this one
    children = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert children >= sum(m.cpu_seconds for m in plain + edited)
