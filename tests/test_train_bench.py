"""`python -m bench train`: each configuration runs the real training loop for its seconds and
reports seconds a step of each phase it times; the table prints them side by side."""

from __future__ import annotations

import pytest

from bench.train import CONFIGS, BenchConfig, bench_config, print_train


def test_a_configuration_times_both_phases_of_the_real_loop():
    tiny = BenchConfig("tiny", dict(batch_size=2, precompute=True, unet_channels=(32, 64)))
    row = bench_config(tiny, seconds=1.5, latent_scenes=8)
    assert (row["config"], row["processes"], row["threads"], row["batch"]) == ("tiny", 1, 1, 2)
    for phase in ("vae", "unet"):
        assert row[f"{phase}_s_per_step"] > 0 and row[f"{phase}_steps_timed"] >= 1
        assert row[f"{phase}_steps_per_s"] == pytest.approx(1 / row[f"{phase}_s_per_step"], rel=0.05)


def test_a_lever_of_one_phase_is_timed_on_that_phase_only_and_the_table_says_so():
    one = BenchConfig("unet only", dict(batch_size=2), phases=("unet",))
    row = bench_config(one, seconds=1.0, latent_scenes=8)
    assert row["vae_s_per_step"] is None and row["unet_s_per_step"] > 0
    table = print_train([row])
    assert table.splitlines()[0].startswith("| configuration | processes × threads |")
    assert "| unet only | 1 × 1 | 2 | – | – |" in table


def test_the_levers_of_the_issue_are_all_there():
    names = " / ".join(c.name for c in CONFIGS)
    for lever in ("baseline", "2 threads", "2 processes", "bf16", "rendered once", "min-SNR", "torch.compile",
                  "(32, 64)", "(96, 192)", "batch 16", "batch 64", "locality"):
        assert lever in names, lever
    assert CONFIGS[0].overrides == {} and CONFIGS[0].threads == 1 and CONFIGS[0].processes == 1


def test_the_command_registers_train(capsys, monkeypatch):
    import bench.__main__ as cli
    import bench.train as train_bench

    monkeypatch.setattr(train_bench, "bench_train", lambda seconds, only=None: [
        {"config": f"{only} {seconds}", "processes": 1, "threads": 1, "batch": 32, "vae_s_per_step": 1.0,
         "vae_steps_per_s": 1.0, "unet_s_per_step": 0.5, "unet_steps_per_s": 2.0}])
    cli.main(["train", "--seconds", "7", "--only", "baseline,2 threads"])
    assert "| ['baseline', '2 threads'] 7.0 | 1 × 1 | 32 | 1.0 | 1.0 | 0.5 | 2.0 |" in capsys.readouterr().out


def test_step_costs_time_each_kernel_and_say_which_gives_the_loops_weights(capsys):
    """`bench train --step-costs`: the per-tensor loop is its own reference, foreach matches it to
    the bit (the recipe uses it), fused rounds differently (why the recipe does not)."""
    import bench.__main__ as cli
    from bench.train import bench_step_costs

    rows = bench_step_costs(repeats=1)
    exact = {(r["part"], r["kernel"]): r["bit_equal"] for r in rows}
    assert exact == {("AdamW step", "per-tensor loop"): True, ("AdamW step", "foreach"): True,
                     ("AdamW step", "fused"): False, ("EMA update", "per-tensor loop"): True,
                     ("EMA update", "foreach"): True}
    assert all(r["ms"] > 0 for r in rows)
    cli.main(["train", "--step-costs"])
    out = capsys.readouterr().out
    assert "| per UNet step | kernel | ms | the loop's weights to the bit |" in out and "| AdamW step | fused |" in out
