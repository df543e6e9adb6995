"""How long to wait before the next try: exponential backoff with full jitter (AWS's advice), one
formula for the invoker's throttle and error retries and the job threads' S3 retries."""

from __future__ import annotations

import random

#: Doublings beyond this add nothing (the cap is reached long before) and would overflow a float.
MAX_DOUBLINGS = 16


def full_jitter(retry: int, base_s: float, cap_s: float) -> float:
    """A delay drawn uniformly from ``[0, min(cap_s, base_s * 2**retry)]``."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(retry, MAX_DOUBLINGS)))
