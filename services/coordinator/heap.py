"""The coordinator process's garbage collector, set for a fan-out's churn of short-lived objects.

Why: a fan-out allocates thousands of container objects per Invoke (botocore's request, headers,
parsed response) in eight threads at once. With CPython's default threshold (700 net new objects)
the young collections run so often that each finds in-flight requests alive and promotes them;
the promotions add up to full collections (the oldest generation grows by a quarter), and each
full collection walks every object the process holds, about 160,000 of them before any job
(botocore's service models, FastAPI, pydantic), and stops every thread while it does.

Measured in one run of ``bench/fanout_parts.py --ranks 10000 --rounds 4 --variants
bare,job,unsettled`` (2026-12-01, 8 threads, min/median/max): with the collector as CPython starts
it, a job spent 607/643/772 ms collecting, in 4-5 full collections of up to 153 ms; settled,
65/116/162 ms, with one full collection in four jobs. Young thresholds of 2,000 and 20,000 (one
job each, not kept) spent 239 and 178 ms against 7,000's 119.

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
