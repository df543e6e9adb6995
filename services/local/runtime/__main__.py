"""``python -m services.local.runtime``: run the local Lambda runtime."""

from services.local.runtime.cli import main

raise SystemExit(main())
