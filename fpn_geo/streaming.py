"""Bounded read-ahead: work handed to threads, processes or a cluster, results taken back in order.

Order keeps outputs identical to a sequential run (the stitcher's float sums, the vectorizer's joins), and the
bound keeps memory to a few items whatever the scene size.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def in_order(
    submit: Callable[[T], Any], items: Iterable[T], ahead: int, cancel: Callable[[Any], Any] = lambda f: f.cancel()
) -> Iterator[Any]:
    """Yield `submit(item).result()` for every item, in order, with at most `ahead` submitted and not yet yielded.

    The next item is submitted before a result is handed on, so the workers never wait on the consumer. If the
    consumer stops early (or fails), what is still pending is cancelled with `cancel(future)`.
    """
    todo = iter(items)
    pending: collections.deque = collections.deque(submit(item) for item in itertools.islice(todo, max(1, ahead)))
    try:
        while pending:
            result = pending.popleft().result()
            for item in itertools.islice(todo, 1):
                pending.append(submit(item))
            yield result
    finally:
        for fut in pending:
            cancel(fut)
