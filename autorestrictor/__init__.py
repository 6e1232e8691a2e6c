"""autorestrictor: keep a Dask graph's related tasks on one worker.

``plan`` is the pure planner (it never imports ``distributed``);
``AutoRestrictor`` is the scheduler plugin that applies its plans;
``explain(collection)`` shows the plan for a computation before it runs.

Install it in any of the ways Dask installs scheduler plugins::

    client.register_plugin(AutoRestrictor())
    client.run_on_scheduler(autorestrictor.install_plugin)
    dask scheduler --preload autorestrictor
    LocalCluster(scheduler_kwargs={"preload": ["autorestrictor"]})
"""

from __future__ import annotations

from typing import Any

from autorestrictor.config import Options
from autorestrictor.planner import Plan, plan

__all__ = [
    "AutoRestrictor",
    "Options",
    "Plan",
    "dask_setup",
    "explain",
    "install_plugin",
    "last_plans",
    "last_rebalances",
    "plan",
]


def __getattr__(name: str) -> Any:
    # The plugin needs distributed; the planner must import without it.
    if name == "AutoRestrictor":
        from autorestrictor.plugin import AutoRestrictor

        return AutoRestrictor
    if name == "explain":  # imports dask's graph machinery; not needed by the plugin
        from autorestrictor.explanation import explain

        return explain
    raise AttributeError(f"module 'autorestrictor' has no attribute {name!r}")


def dask_setup(scheduler) -> None:
    """Preload hook: ``dask scheduler --preload autorestrictor``."""
    from autorestrictor.plugin import AutoRestrictor

    scheduler.add_plugin(AutoRestrictor())


async def install_plugin(dask_scheduler=None, **options: Any) -> None:
    """Install on a running scheduler: ``client.run_on_scheduler(install_plugin)``."""
    from autorestrictor.plugin import AutoRestrictor

    plugin = AutoRestrictor(**options)
    dask_scheduler.add_plugin(plugin)
    await plugin.start(dask_scheduler)


def _history(dask_scheduler=None, what: str = "history") -> list[dict]:
    from autorestrictor.state import state_of

    st = state_of(dask_scheduler)
    return list(getattr(st, what)) if st is not None else []


def last_plans(client) -> list[dict]:
    """The plans the scheduler's AutoRestrictor made, oldest first.

    Each is a dict with ``n_tasks``, ``n_pinned``, ``n_groups``,
    ``predicted_bytes``, ``pinned_per_worker``, ``plan_s`` and ``reason``
    (``None`` when the plan was applied). Empty if the plugin is not installed.
    """
    return client.run_on_scheduler(_history)


def last_rebalances(client) -> list[dict]:
    """The rebalancing moves the scheduler's AutoRestrictor made, oldest first.

    Each is a dict with ``action`` (``"rebalance"``), ``from``, ``to``,
    ``tasks``, ``units``, ``why`` and ``time``. Empty if none, or if the
    plugin is not installed.
    """
    return client.run_on_scheduler(_history, what="moves")
