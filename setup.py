"""Builds the rendezvous hub's optional C accelerator; everything else is in pyproject.toml.

Why optional: the rendezvous server runs on the standard library alone, and the C hub
(``services/rendezvous/_hub.c`` and the files it names) only makes it faster. Where the build fails (no C compiler, no
Python headers) or cannot apply (not Linux: the hub needs epoll, accept4 and eventfd), pip still
installs everything else and the server runs the pure-Python hub (``COSMIC_RENDEZVOUS_HUB=auto``).
``COSMIC_BUILD_C_HUB=0`` leaves it out on purpose.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

C_HUB = Extension("services.rendezvous._hub",
                  [f"services/rendezvous/{name}.c" for name in ("_hub", "_hub_tables", "_hub_conn")],
                  depends=["services/rendezvous/_hub.h"], optional=True,
                  # hidden: the three files share names that nothing outside the extension should see
                  extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"])

wanted = sys.platform.startswith("linux") and os.environ.get("COSMIC_BUILD_C_HUB", "1") != "0"
setup(ext_modules=[C_HUB] if wanted else [])
