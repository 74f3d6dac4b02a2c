"""The VAE phase's roll-back guard: when it snapshots and when it rolls back, and that the training
loop really goes back (weights, optimizer, batches and the loss record) at half the learning rate."""

from __future__ import annotations

import pytest
import torch

from models.loss_guard import LossGuard


def test_a_falling_loss_is_snapshotted_and_never_rolled_back():
    guard = LossGuard(3.0, window=2, every=2)
    verdicts = [guard.observe(step, 1.0 / step) for step in range(1, 9)]
    assert verdicts == ["ok", "snapshot", "ok", "snapshot", "ok", "snapshot", "ok", "snapshot"]
    assert guard.snapshot_step == 8


def test_a_jump_past_the_ratio_rolls_back_to_the_last_snapshot():
    guard = LossGuard(3.0, window=2, every=2)
    assert [guard.observe(s, loss) for s, loss in enumerate([1.0, 1.0, 1.0, 2.0], 1)] == \
        ["ok", "snapshot", "ok", "snapshot"]  # 1.5 is within 1.5 x the best: still healthy
    assert guard.observe(5, 2.5) == "ok"  # mean 2.25: risen, but under 3 x 1.0, and not a snapshot step
    assert guard.observe(6, 9.0) == "rollback"  # mean 5.75 > 3 x 1.0
    guard.rolled_back()
    assert guard.observe(5, 1.0) == "ok"  # the window starts again after the roll-back
    assert guard.observe(6, 1.0) == "snapshot"


def test_a_risen_loss_is_not_snapshotted_and_without_a_snapshot_nothing_rolls_back():
    guard = LossGuard(3.0, window=2, every=2)
    assert guard.observe(1, 1.0) == "ok" and guard.observe(2, 1.0) == "snapshot"
    assert guard.observe(3, 1.8) == "ok" and guard.observe(4, 1.8) == "ok"  # 1.8 > 1.5 x 1.0: no snapshot
    assert guard.snapshot_step == 2
    fresh = LossGuard(3.0, window=2, every=2)
    assert [fresh.observe(s, loss) for s, loss in enumerate([1.0, 1.0, 50.0], 1)] == ["ok", "snapshot", "rollback"]
    early = LossGuard(3.0, window=2, every=4)
    assert [early.observe(s, loss) for s, loss in enumerate([1.0, 1.0, 50.0, 50.0], 1)] == ["ok"] * 4


def test_ratio_zero_is_no_guard():
    guard = LossGuard(0.0, window=1, every=1)
    assert [guard.observe(s, loss) for s, loss in enumerate([1.0, 100.0, 1e6], 1)] == ["ok"] * 3


class _Scripted:
    """A guard that snapshots after step 2 and rolls back once after step 4."""

    def __init__(self, ratio: float):
        self.fired = False

    def observe(self, step: int, loss: float) -> str:
        if step == 2:
            return "snapshot"
        if step == 4 and not self.fired:
            self.fired = True
            return "rollback"
        return "ok"

    def rolled_back(self) -> None:
        pass


def test_the_vae_phase_goes_back_to_its_snapshot_at_half_the_learning_rate(tmp_path, monkeypatch):
    import models.shapes_training as training

    small = dict(vae_steps=5, unet_steps=1, batch_size=2, latent_scenes=8, warmup_steps=1)
    plain = training.train(tmp_path / "plain", training.TrainConfig(**small), checkpoint_dir=tmp_path / "ck0",
                           resume=False)
    monkeypatch.setattr(training, "LossGuard", _Scripted)
    config = training.TrainConfig(**small, vae_guard=3.0)
    assert config.key() != training.TrainConfig(**small).key()
    guarded = training.train(tmp_path / "guarded", config, checkpoint_dir=tmp_path / "ck1", resume=False)
    plain_vae, guarded_vae = plain["losses"]["vae"], guarded["losses"]["vae"]
    assert guarded["vae_rollbacks"] == [4] and plain["vae_rollbacks"] == []
    # the record holds one loss per step: steps 3 and 4 were dropped and done again
    assert len(guarded_vae) == 5
    # steps 1-2 as before; step 3 again sees the snapshot's weights and the same batch, so its loss
    # (taken before the update) is the plain run's to the last digit
    assert guarded_vae[:3] == plain_vae[:3]
    # from the half-rate update of step 3 on, the run differs
    assert guarded_vae[3] != plain_vae[3]
    state = torch.load(tmp_path / "ck1" / "state.pt", weights_only=False)
    assert state["vae_lr_scale"] == pytest.approx(0.5)
