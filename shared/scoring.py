"""The engagement scoring model: one definition, used by the engagement service (README,
docs) and the projection (materialised scores and engaged/stale/reach-out lists).

Per ordered pair (actor -> target) and per connection (both directions summed), each
interaction adds its kind's weight, halving every `half_life_days`. Scores are stored
*relative to a fixed epoch* — each interaction contributes `weight * 2**((t - epoch)/half_life)`
— so adding interactions is a plain sum: order-independent and exact under re-ordering,
which the projection needs. The current value is `stored * 2**(-(now - epoch)/half_life)`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic_settings import BaseSettings, SettingsConfigDict

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


class ScoringModel(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAPPORT_SCORING_", extra="ignore", frozen=True)

    half_life_days: float = 90.0
    like: float = 1.0
    comment: float = 3.0
    share: float = 3.0
    message: float = 5.0
    congratulate: float = 2.0
    endorse: float = 4.0
    recommend: float = 8.0
    # An engaged connection: a current score above this, or any interaction recently.
    engaged_threshold: float = 5.0
    engaged_recent_days: float = 90.0
    # A stale connection: connected at least this long, and silent at least this long.
    stale_days: float = 365.0
    # A reach-out reminder: engaged before (score ever above threshold), silent this long.
    reach_out_days: float = 90.0
    # Congratulate prompts: milestones of connections this recent.
    congratulate_window_days: float = 14.0

    def weight(self, kind: str) -> float:
        return float(getattr(self, kind))

    def contribution(self, kind: str, at: datetime) -> float:
        """What one interaction adds to a stored (epoch-relative) score."""
        return self.weight(kind) * 2 ** (self._half_lives(at))

    def current(self, stored: float, now: datetime) -> float:
        """The decayed score now, from a stored (epoch-relative) score."""
        return stored * 2 ** (-self._half_lives(now))

    def _half_lives(self, at: datetime) -> float:
        return (at - EPOCH).total_seconds() / (self.half_life_days * 86400)

    def is_engaged(self, stored: float, last_interaction: datetime | None, now: datetime) -> bool:
        if last_interaction is None:
            return False
        recent = now - last_interaction <= timedelta(days=self.engaged_recent_days)
        return recent or self.current(stored, now) > self.engaged_threshold

    def is_stale(
        self, connected_at: datetime, last_interaction: datetime | None, now: datetime
    ) -> bool:
        long_connected = now - connected_at >= timedelta(days=self.stale_days)
        silent_since = last_interaction or connected_at
        return long_connected and now - silent_since >= timedelta(days=self.stale_days)

    def needs_reach_out(
        self, peak_stored_at_last: float, last_interaction: datetime | None, now: datetime
    ) -> bool:
        """Engaged at the time of the last interaction, silent for `reach_out_days` since."""
        if last_interaction is None:
            return False
        was_engaged = self.current(peak_stored_at_last, last_interaction) > self.engaged_threshold
        return was_engaged and now - last_interaction >= timedelta(days=self.reach_out_days)
