"""Our server with the C hub driven by the event loop's reader (``poll()`` on every wake-up of
the loop) instead of by its own thread: the design ``services/rendezvous/chub.py`` did not
choose, kept runnable so that ``rendezvous_server.py`` can measure the choice again
(the ``ours-c-reader/uvloop`` variant). Same options as ``python -m services.rendezvous``.
"""

from __future__ import annotations

import sys

from services.rendezvous import chub
from services.rendezvous.cli import main

if __name__ == "__main__":
    chub.DRIVE = "reader"
    raise SystemExit(main(sys.argv[1:]))
