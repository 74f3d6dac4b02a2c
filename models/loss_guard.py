"""A roll-back guard for a training loss that blows up.

The guard watches the mean of the last ``window`` losses. While that mean stays within ``ratio``
of the best mean seen so far, it asks for a snapshot every ``every`` steps; once the mean rises
past ``ratio`` times the best, it asks the loop to go back to the last snapshot and to halve its
learning rate from there. The decision depends only on the losses, so a deterministic run stays
deterministic, and every process of a distributed run (which sees the same averaged loss) decides
the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LossGuard:
    """Decides, loss by loss, whether to keep going, take a snapshot or roll back.

    ``ratio`` <= 0 turns the guard off (``observe`` always answers "ok").
    """

    ratio: float
    window: int = 10
    every: int = 50
    recent: list[float] = field(default_factory=list)
    best: float = float("inf")
    snapshot_step: int | None = None

    def observe(self, step: int, loss: float) -> str:
        """Record the loss of step ``step`` (counted from 1, after the update).

        Returns:
            "rollback" when the recent mean has blown up past ``ratio`` x the best and a snapshot
            exists to go back to; "snapshot" when ``step`` is a multiple of ``every`` and the
            recent mean is healthy; "ok" otherwise.
        """
        if self.ratio <= 0:
            return "ok"
        self.recent = (self.recent + [float(loss)])[-self.window:]
        if len(self.recent) < self.window:
            return "ok"
        mean = sum(self.recent) / self.window
        if mean > self.ratio * self.best:
            if self.snapshot_step is not None:
                return "rollback"
            return "ok"
        self.best = min(self.best, mean)
        if step % self.every == 0 and mean <= 1.5 * self.best:
            self.snapshot_step = step
            return "snapshot"
        return "ok"

    def rolled_back(self) -> None:
        """Forget the recent losses after the loop has gone back to the snapshot."""
        self.recent = []
