"""Seconds per pipeline stage (read, model, stitch, vectorize, write), for run summaries and benchmarks."""

from __future__ import annotations

import contextlib
import time


class StageTimes(dict):
    """Seconds spent per stage, for the summary and the benchmarks."""

    @contextlib.contextmanager
    def time(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + time.perf_counter() - t0
