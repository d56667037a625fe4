"""Seconds per pipeline stage (read, model, stitch, vectorize, write), for run summaries and benchmarks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping


class StageTimes(dict):
    """Seconds spent per stage, for the summary and the benchmarks."""

    @contextlib.contextmanager
    def time(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - t0

    def add(self, other: Mapping[str, float]) -> StageTimes:
        """Add another set of stage seconds into this one (a block's post-processing into its run's)."""
        for stage, seconds in other.items():
            self[stage] = self.get(stage, 0.0) + seconds
        return self
