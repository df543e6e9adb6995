"""A process's peak resident memory as Linux reports it (``VmHWM`` in ``/proc/<pid>/status``).

Read in two places: by the worker for its own result document, and by the local runtime for the
REPORT line's "Max Memory Used" of a sandbox, which it resets before each invocation (writing 5
to ``clear_refs``), as Lambda reports a peak per invocation. Standard library only.
"""

from __future__ import annotations


def peak_rss_kib(pid: int | str = "self") -> int | None:
    """The process's peak RSS in KiB; None where ``/proc`` has no answer (not Linux, process gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
