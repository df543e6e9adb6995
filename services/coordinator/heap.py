"""The coordinator process's garbage collector, set for a fan-out's churn of short-lived objects.

Why: a fan-out allocates thousands of container objects per Invoke (botocore's request, headers,
parsed response) in eight threads at once. With CPython's default threshold (700 net new objects)
the young collections run so often that each finds in-flight requests alive and promotes them;
the promotions add up to full collections (the oldest generation grows by a quarter), and each
full collection walks every object the process holds, about 160,000 of them before any job
(botocore's service models, FastAPI, pydantic), and stops every thread while it does.

Measured with ``bench/coordinator.py``'s setup (10,000 no-op ranks, 8 threads, one round each,
2026-12-01): the job spent 745 ms collecting, in 5 full collections of up to 142 ms; with the
process's start-up objects frozen and the young threshold at 7,000, 119 ms and no full collection
(the longest pause 26 ms). Thresholds of 2,000 and 20,000 spent 239 and 178 ms.

Freezing is only for what the process keeps for its whole life: the objects present once it has
imported everything and built its :class:`~.service.Coordinator`. A frozen object that later
becomes part of an unreachable cycle is never collected, so :func:`settle` is called once, by the
process's entry point, never by a library call or a test that builds coordinators by the dozen.
"""

from __future__ import annotations

import gc

#: Net new tracked objects between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 7000


def settle() -> None:
    """Move everything alive now out of every future collection and space the young collections out.

    Call once, when the process holds what it keeps for good and no job yet."""
    gc.collect()  # what start-up left as garbage goes now, not into the permanent generation
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
