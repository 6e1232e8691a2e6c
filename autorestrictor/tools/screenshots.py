"""Headless Chromium for the dashboard test, and the README's pictures.

``python -m autorestrictor screenshots`` runs real code and saves
``docs/dashboard.png`` (the page during a run, held at a known point) and
``docs/explain.png`` (``explain()`` on the seed's example, as a notebook
shows it). The browser is the operating system's Chromium and its driver
(Debian: ``apt-get install chromium chromium-driver``; ``.ci/run`` installs
them); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

CHROMIUM = os.environ.get("AUTORESTRICTOR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AUTORESTRICTOR_CHROMEDRIVER", "/usr/bin/chromedriver")

#: Flags for a headless Chromium on a closed network: without the
#: background-networking ones it keeps trying to reach Google's servers.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
)

#: JavaScript: the ``data`` of the Bokeh model named ``arguments[0]``, as JSON.
_SOURCE_DATA = """
const doc = window.Bokeh && Bokeh.documents.length ? Bokeh.documents[0] : null;
const model = doc ? doc.get_model_by_name(arguments[0]) : null;
if (!model) { return null; }
const d = model.data, out = {};
const keys = d instanceof Map ? Array.from(d.keys()) : Object.keys(d);
for (const k of keys) { out[k] = Array.from(d instanceof Map ? d.get(k) : d[k]); }
return JSON.stringify(out);
"""

#: JavaScript: true once Bokeh has a document whose plots have views.
_RENDERED = """
if (!(window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].roots().length)) {
    return false;
}
return Object.keys(Bokeh.index || {}).length > 0;
"""


def chromium(user_data_dir: str | Path, width: int = 1400, height: int = 1000):
    """A selenium driver for the system's headless Chromium.

    Raises
    ------
    FileNotFoundError
        If Chromium or its driver is not installed, naming the package.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            raise FileNotFoundError(
                f"{path} not found: install the operating system's {package} "
                f"(apt-get install -y chromium chromium-driver; .ci/run does it)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_rendered(driver, timeout: float = 30.0) -> None:
    """Wait until the Bokeh page has received its document over the websocket
    and drawn its plots."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(_RENDERED),
        message=f"the Bokeh page at {driver.current_url} did not render in {timeout} s",
    )


def source_data(driver, name: str) -> dict | None:
    """The data of the page's Bokeh model ``name``, as the browser holds it."""
    out = driver.execute_script(_SOURCE_DATA, name)
    return None if out is None else json.loads(out)


def model_text(driver, name: str) -> str | None:
    """The ``text`` of the page's Bokeh model ``name`` (a ``Div``)."""
    return driver.execute_script(
        "const m = Bokeh.documents[0].get_model_by_name(arguments[0]);"
        "return m ? m.text : null;", name)


# ---------------------------------------------------------------------------
# The README's pictures
# ---------------------------------------------------------------------------


def _gate(block, ev, free, block_id=None):
    """Wait for ``ev`` unless this column chunk is one of the ``free`` ones."""
    if block_id is not None and block_id[1] not in free:
        ev.wait()
    return block


def _first_columns(e, n: int) -> set[int]:
    """The first ``n`` column chunks each worker runs, by ``explain()``'s plan."""
    m, p = e.map, e.plan
    rank = dict(zip(p.keys, p.rank_of.tolist()))
    chunks = [k for k in p.keys if type(k) is tuple and k[0] == m.name]
    free: set[int] = set()
    for w in p.workers:
        mine = sorted((rank[k], k[-1]) for k in chunks if p.assignment[k] == w)
        free.update(col for _, col in mine[:n])
    return free


def dashboard_picture(path: Path) -> None:
    """The page during a run of 120 column chunks, held at a known point."""
    import dask.array as da
    from distributed import Client, Event, LocalCluster

    import autorestrictor
    from autorestrictor import AutoRestrictor

    with LocalCluster(n_workers=4, threads_per_worker=1, processes=True, memory_limit=0,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.register_plugin(AutoRestrictor())
        ev = Event()
        x = da.random.default_rng(0).random((20_000, 120), chunks=(20_000, 1))

        def graph(free):
            return x.map_blocks(_gate, ev, free, dtype=float).sum(axis=1)

        # explain() tells which chunks each worker runs first: let 8 of them through
        free = _first_columns(autorestrictor.explain(graph(set()), client=client), 8)
        future = client.compute(graph(free))
        deadline = time.monotonic() + 60
        while not client.run_on_scheduler(_gated, free=free):
            assert time.monotonic() < deadline, "the run did not reach its gates"
            time.sleep(0.1)
        url = cluster.dashboard_link.replace("/status", "/autorestrictor")
        with tempfile.TemporaryDirectory() as profile:
            driver = chromium(profile, width=1300, height=1050)
            try:
                driver.get(url)
                wait_rendered(driver)
                time.sleep(1.5)  # one more periodic update
                driver.save_screenshot(str(path))
            finally:
                driver.quit()
        ev.set()
        future.result()


def _gated(dask_scheduler=None, free=()) -> bool:
    """Every worker has reached its gate: it runs a chunk that waits for the event."""
    return all(
        any(type(ts.key) is tuple and ts.key[-1] not in free for ts in ws.processing)
        for ws in dask_scheduler.workers.values()
    )


def explain_picture(path: Path) -> None:
    """explain() on the seed's example, on a cluster that ran one like it before."""
    import dask.array as da
    from distributed import Client, LocalCluster

    import autorestrictor
    from autorestrictor import AutoRestrictor

    def seed(rows):
        return da.random.default_rng(42).random((rows, 200), chunks=(rows, 1)).sum(axis=1)

    with LocalCluster(n_workers=4, threads_per_worker=1, processes=True, memory_limit=0,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.register_plugin(AutoRestrictor())
        seed(250_000).compute()  # the plugin learns each kind of task's output size
        e = autorestrictor.explain(seed(250_001), client=client)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "explain.html"
        page.write_text(f"<html><body style='margin: 12px; background: white'>"
                        f"{e._repr_html_()}</body></html>")
        driver = chromium(Path(tmp) / "profile", width=760, height=600)
        try:
            from selenium.webdriver.common.by import By

            driver.get(page.as_uri())
            driver.find_element(By.CSS_SELECTOR, ".autorestrictor-explain").screenshot(str(path))
        finally:
            driver.quit()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="docs", help="folder for dashboard.png and explain.png")
    parser.add_argument("--only", choices=["dashboard", "explain"], default=None)


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "explain"):
        explain_picture(out / "explain.png")
        print(f"wrote {out / 'explain.png'}")
    if args.only in (None, "dashboard"):
        dashboard_picture(out / "dashboard.png")
        print(f"wrote {out / 'dashboard.png'}")
    return 0
