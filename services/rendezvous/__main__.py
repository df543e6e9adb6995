"""``python -m services.rendezvous``: run the rendezvous server."""

from services.rendezvous.cli import main

raise SystemExit(main())
