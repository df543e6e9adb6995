"""The dashboard the coordinator serves at ``/``: the job list, each job live, the sweep table.

Plain server-rendered HTML (Jinja2 templates in ``templates/``) with a little JavaScript of ours
(``static/``) that polls the API the page is served by; Swagger UI at ``/docs`` from its package.
Nothing is loaded from anywhere else: every asset is served by this process, so it all works
offline and behind a firewall. Routes are in :mod:`.pages`; what they show in :mod:`.views`.
"""

from __future__ import annotations

from services.coordinator.dashboard.pages import register

__all__ = ["register"]
