"""``python -m services.worker``: run the local Lambda runtime."""

from services.worker.runtime.cli import main

raise SystemExit(main())
