"""``/autorestrictor/plans.json`` on the scheduler's HTTP server."""

from __future__ import annotations

import json
import logging
import sys

from tornado import web

from autorestrictor.state import state_of

logger = logging.getLogger("autorestrictor")

ROUTE = "/autorestrictor/plans.json"


class PlansJSON(web.RequestHandler):
    def initialize(self, dask_server=None) -> None:
        self.server = dask_server

    def get(self) -> None:
        st = state_of(self.server)
        plans = list(st.history) if st is not None else []
        moves = list(st.moves) if st is not None else []
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"plans": plans, "rebalances": moves}, default=str))


def add_routes(scheduler) -> None:
    """Serve the plan history, if the scheduler runs an HTTP server."""
    app = getattr(scheduler, "http_application", None)
    if app is None:
        logger.info("scheduler has no HTTP server: %s is not served", ROUTE)
        return
    if getattr(scheduler, "_autorestrictor_routes", False):
        return
    app.add_application(web.Application([(ROUTE, PlansJSON, {"dask_server": scheduler})]))
    scheduler._autorestrictor_routes = True


def add_dashboard(scheduler) -> None:
    """Add the autorestrictor page to the scheduler's Bokeh dashboard, if it runs one.

    The dashboard's modules (and so Bokeh) are loaded only when the
    scheduler started its dashboard; otherwise nothing is imported.
    """
    if getattr(scheduler, "_autorestrictor_dashboard", False):
        return
    scheduler._autorestrictor_dashboard = True
    if "distributed.dashboard.scheduler" not in sys.modules:
        logger.info("scheduler has no Bokeh dashboard: the autorestrictor page is not added")
        return
    try:
        from autorestrictor import dashboard
    except ImportError as e:
        logger.warning("the autorestrictor dashboard page could not be loaded: %s", e)
        return
    dashboard.register(scheduler)
