"""Helpers shared by the test modules: each is defined here and nowhere else.

Functions that run on workers (``slow_block``, ``pause_worker``, ...) are
pickled by reference to this module, as the test modules' own are; worker
processes import it from the same ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import Counter
from unittest import mock

import pytest

#: Plan every graph, however small (the default min-tasks steps back on test-sized graphs).
SMALL = {"autorestrictor.min-tasks": 1}


@contextlib.contextmanager
def graphs_read():
    """The planner's inputs (``intake.read_graph``'s) of every graph the
    plugin reads while the block runs, in a list."""
    from autorestrictor import intake

    inputs: list = []
    read = intake.read_graph
    with mock.patch.object(intake, "read_graph",
                           lambda *a, **k: inputs.append(read(*a, **k)) or inputs[-1]):
        yield inputs


# -- the plugin's state, seen from a test ------------------------------------


def pinned(s) -> Counter:
    """Tasks the plugin pinned, by worker (a worker whose run is empty counts 0)."""
    out = Counter()
    st = getattr(s, "_autorestrictor", None)
    for addr, units in (st.runs if st is not None else {}).items():
        out[addr] += sum(len(u.keys) for u in units)
    return out


# -- graphs that stop at a known point ---------------------------------------


def slow_block(x, ev):
    """Return ``x`` once the distributed ``Event`` ``ev`` is set."""
    ev.wait()
    return x


async def blocked_reduction(c, s, n_chunks: int, **options):
    """Register ``AutoRestrictor(**options)`` and start a pinned reduction
    (``n_chunks`` column chunks summed over columns) whose chunks wait for an
    Event. Returns ``(event, future)`` once the plan is applied; the result,
    once the event is set, is ``np.full(100, float(n_chunks))``."""
    import dask.array as da
    from distributed import Event
    from distributed.utils_test import async_poll_for

    from autorestrictor import AutoRestrictor

    await c.register_plugin(AutoRestrictor(**options))
    ev = Event()
    x = da.ones((100, n_chunks), chunks=(100, 1)).map_blocks(slow_block, ev, dtype=float)
    fut = c.compute(x.sum(axis=1))
    await async_poll_for(lambda: pinned(s), timeout=5)
    return ev, fut


# -- workers (run with ``client.run``) ---------------------------------------


def pause_worker(dask_worker) -> None:
    from distributed.core import Status

    dask_worker.status = Status.paused


def resume_worker(dask_worker) -> None:
    from distributed.core import Status

    dask_worker.status = Status.running


# -- waiting, in synchronous tests (async tests use distributed's async_poll_for)


def wait_for(condition, timeout: float = 30.0, what: str = "the condition",
             interval: float = 0.05):
    """Poll ``condition()`` until it returns something true, and return that;
    fail, naming ``what``, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# -- what the machine must provide --------------------------------------------


def requires(need: str, missing: str | None) -> None:
    """Skip the test, saying what is missing, when ``missing`` is set;
    under ``CI=true`` fail instead: CI must provide everything."""
    if not missing:
        return
    message = f"needs {need}: {missing}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true, where this must not be missing)", pytrace=False)
    pytest.skip(message)


def browser_missing() -> str | None:
    """What the browser test lacks (selenium, the system's Chromium or its
    driver, at the paths ``autorestrictor.tools.screenshots`` uses), or None."""
    from autorestrictor.tools import screenshots

    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    absent = [f"{path} ({package})" for path, package in (
        (screenshots.CHROMIUM, "chromium"), (screenshots.CHROMEDRIVER, "chromium-driver"))
        if not os.access(path, os.X_OK)]
    if absent:
        return (f"{' and '.join(absent)} not found "
                "(apt-get install chromium chromium-driver; .ci/run does it)")
    return None


def link_missing(link=None, tools: tuple[str, ...] = ()) -> str | None:
    """What shaping ``link`` on this machine lacks (root, ``unshare``,
    ``nsenter``, ``ip``, ``tc``, the kernel's support: the bench's own
    check, which tries each in a throwaway namespace), or None. Without a
    link, only root and the tools (and ``tools``) are looked for."""
    from autorestrictor.tools.link import LinkError, check_support

    if os.geteuid() != 0:
        return f"not root (this runs as uid {os.geteuid()})"
    absent = [t for t in ("unshare", "nsenter", "ip", "tc", *tools) if shutil.which(t) is None]
    if absent:
        return f"{', '.join(absent)} not on PATH (util-linux / iproute2)"
    if link is not None:
        try:
            check_support(link)
        except LinkError as e:
            return str(e)
    return None
