"""The bench on a shaped link (``--link``): namespaces, token buckets, cleanup.

The real runs need root, ``unshare``, ``nsenter``, ``ip`` (``ip netns``),
``tc`` and a kernel with ``tbf``, veth and bridges: where this machine lacks
one, they skip, naming it (:func:`check_support`'s reason); under
``CI=true`` they fail instead (CI has them all). Real runs:
``test_shaped_runs_move_data_slower_and_leave_nothing`` (3 small runs, about
13 s on 2 cores) and the two killed runs (1-2 s each: they are killed as
soon as their workers run). The tests of bad input and missing support run
anywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading

import pytest
from helpers import link_missing, requires, wait_for

from autorestrictor.__main__ import main as cli_main
from autorestrictor.tools import bench, link
from autorestrictor.tools.link import Link, LinkError, check_support, parse_rate

#: Slow enough that a shaped transfer is clearly slower than an unshaped
#: one even on a busy machine (there, receiving runs at 30-300 MB/s), fast
#: enough for a small run to take seconds.
RATE = "100mbit"


# --------------------------------------------------------------------------
# the host, as seen from outside the runs


def _net_namespaces() -> dict[int, set[int]]:
    """``{network namespace inode: pids in it}`` over every live process."""
    spaces: dict[int, set[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            spaces.setdefault(link.netns_id(pid), set()).add(int(pid))
        except OSError:  # the process ended while we looked
            continue
    return spaces


def _host_state() -> dict[str, object]:
    """What a run must not change: the host's links, named namespaces, and
    which network namespaces have processes in them."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    named = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    return {
        "links": sorted(line.split(":")[1].strip() for line in links.splitlines()),
        "named namespaces": named.split(),
        "namespaces in use": set(_net_namespaces()),
    }


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (zombies have)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) == pgid and _alive(int(pid)):
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def _descendants(root: int) -> set[int]:
    """Pids of the live descendants of process ``root``."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class NamespaceWatch:
    """Collect, in a background thread, the network namespaces that this
    process's descendants enter (other than ours), every 20 ms."""

    def __init__(self):
        self.seen: set[int] = set()
        # Namespaces entered, counting one that appears again after it was
        # gone as a new one: the kernel reuses a destroyed namespace's
        # number, so a later run's namespace may carry an earlier one's.
        self.entered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        ours = link.netns_id()
        live: set[int] = set()
        while not self._stop.wait(0.02):
            now = set()
            for pid in _descendants(os.getpid()):
                try:
                    now.add(link.netns_id(pid))
                except OSError:  # ended meanwhile
                    continue
            now.discard(ours)
            self.entered += len(now - live)
            self.seen |= now
            live = now

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _assert_host_unchanged(before: dict, gone: set[int]) -> None:
    """The host's links and named namespaces are as they were, and no process
    is in any of the run's namespaces ``gone`` any more (polled: the run's
    last processes may still be exiting)."""
    def settled():
        now = _host_state()
        return now if not gone & now["namespaces in use"] else None

    now = wait_for(settled, 20, "the run's network namespaces to go")
    assert now["links"] == before["links"]
    assert now["named namespaces"] == before["named namespaces"]


# --------------------------------------------------------------------------
# bad input and missing support (no runs)


def test_bad_rates_and_shapes_are_named(capsys):
    assert parse_rate("1gbit") == 1e9 and parse_rate("250mbit") == 250e6
    assert parse_rate("100mbps") == 800e6  # tc's bps are bytes per second
    for bad in ("1 gigabit", "fast", "-5mbit", "0gbit", "1e9", ""):
        with pytest.raises(ValueError, match="bad link rate"):
            parse_rate(bad)
    with pytest.raises(ValueError, match="bad link shape 'mesh'"):
        Link("1gbit", "mesh")
    assert Link("1gbit").burst_bytes == 250_000 and Link("1mbit").burst_bytes == 131_072

    code = cli_main(["bench", "--workloads", "seed-sum", "--link", "1 gigabyte"])
    assert code == 1
    assert "bad link rate '1 gigabyte'" in capsys.readouterr().err


def test_missing_support_fails_at_once_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LinkError, match="needs root.*uid 1000"):
        check_support(Link("1gbit"))
    monkeypatch.undo()

    # as root, on a PATH with every tool but tc (stand-ins: none of them is run,
    # and the machine need not have them)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for tool in ("unshare", "nsenter", "ip"):
        (tmp_path / tool).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LinkError, match="needs 'tc' on PATH"):
        check_support(Link("1gbit"))

    # and the bench says so before any run
    monkeypatch.setattr(bench, "run_one", lambda *a, **k: pytest.fail("a run was started"))
    with pytest.raises(LinkError, match="'tc'"):
        bench.run_bench(["seed-sum"], ["default"], link=Link("1gbit"), progress=False)


def test_shaping_outside_a_private_namespace_is_refused():
    with pytest.raises(LinkError, match="refusing to shape"):
        link.shape_loopback(Link("1gbit"))
    with pytest.raises(LinkError, match="refusing to shape"):
        link.make_switch()


def test_table_shows_the_link_and_compares_modes_on_the_same_link():
    def row(mode, wall, where):
        return {"workload": "w", "mode": mode, "wall_s": wall, "bytes_moved": 100e6,
                "transfers": 1, "peak_memory_bytes": 1e8, "max_share": 0.5, "plan_s": 0.0,
                "checksum": "c", "transfer_s": 2.0, "transfer_in_bytes": 100e6,
                "link": where and {"rate": "1gbit", "shape": where, "bits_per_s": 1e9,
                                   "probe_bytes_per_s": 118e6}}

    lines = bench.format_table([
        row("default", 4.0, None), row("autorestrictor", 3.0, None),
        row("default", 8.0, "per-worker"), row("autorestrictor", 2.0, "per-worker"),
    ]).splitlines()
    assert lines[0].split()[:3] == ["workload", "link", "mode"]
    cells = {tuple(line.split()[1:-14]): line.split() for line in lines[2:6]}
    assert set(cells) == {("-", "default"), ("-", "autorestrictor"),
                          ("1gbit", "per-worker", "default"),
                          ("1gbit", "per-worker", "autorestrictor")}
    # wall ratios against default on the same link
    assert cells[("-", "autorestrictor")][-2] == "0.75x"
    assert cells[("1gbit", "per-worker", "autorestrictor")][-2] == "0.25x"
    assert ("link 1gbit per-worker: probe 118 MB/s (median); transfers received at 50 MB/s "
            "overall") in lines


# --------------------------------------------------------------------------
# real runs on a shaped link


def _requires_a_shaped_link() -> None:
    """Skip (under ``CI=true``: fail) where this machine cannot shape ``RATE`` per worker."""
    requires("a shaped link (root, unshare, ip netns, tc, tbf, veth, bridges)",
             link_missing(Link(RATE, "per-worker")))


def _throughput(row: dict) -> float:
    """Bytes per second the workers received while receiving."""
    assert row["transfer_s"] > 0 and row["transfer_in_bytes"] > 0, row
    return row["transfer_in_bytes"] / row["transfer_s"]


def test_shaped_runs_move_data_slower_and_leave_nothing():
    """The same small run, unshaped, on one shared link and on a link per
    worker: the shaped runs receive their bytes at most at the link's rate,
    well below loopback's, and the host is as it was afterwards."""
    _requires_a_shaped_link()
    before = _host_state()
    with NamespaceWatch() as watch:
        rows = {
            where: bench.run_one("seed-sum", "default", workers=2, scale=0.05, timeout=120,
                                 link=where and Link(RATE, where))
            for where in (None, "shared", "per-worker")
        }
    assert watch.entered >= 1 + 1 + 2, watch.seen  # shared; switch and 2 workers
    _assert_host_unchanged(before, gone=watch.seen)

    assert rows[None]["link"] is None
    rate = parse_rate(RATE) / 8
    plain = _throughput(rows[None])
    for where in ("shared", "per-worker"):
        row = rows[where]
        assert row["link"]["rate"] == RATE and row["link"]["shape"] == where
        assert row["link"]["probe_bytes_per_s"] <= link.PROBE_TOLERANCE * rate, row["link"]
        assert row["checksum"] == rows[None]["checksum"]
        assert row["bytes_moved"] > 10e6, row["bytes_moved"]  # enough to measure
        shaped = _throughput(row)
        assert shaped <= 1.1 * rate, (where, shaped / 1e6)
        assert shaped < plain / 2, (where, shaped / 1e6, plain / 1e6)


def _start_run(tmp_path, cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=bench.child_env(), stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "stderr", "w"), start_new_session=True)


def _run_namespaces(pgid: int, workers: int) -> set[int] | None:
    """The run's namespaces once its switch and every worker's exist and a
    ``dask worker`` runs in each; ``None`` before."""
    pids = _group(pgid)
    spaces = set()
    for pid in pids:
        with contextlib.suppress(OSError):  # the process ended meanwhile
            spaces.add(link.netns_id(pid))
    running = sum(1 for pid in pids if b"dask_worker" in _cmdline(pid))
    return spaces if len(spaces) >= workers + 1 and running >= workers else None


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_run_killed_midway_leaves_nothing(tmp_path):
    """Kill a per-worker run's process group once its namespaces and workers
    exist, as the bench's timeout does: no process, namespace, link left."""
    _requires_a_shaped_link()
    before = _host_state()
    cmd = bench.child_command("seed-sum", "default", 2, 1.0, str(tmp_path / "row.json"),
                              link=Link(RATE, "per-worker"))
    proc = _start_run(tmp_path, cmd)
    try:
        spaces = wait_for(lambda: _run_namespaces(proc.pid, 2), 60,
                             "the run's namespaces and workers")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # at once: the run itself would go on for tens of seconds
    wait_for(lambda: not _group(proc.pid), 5, "the run's processes to end")
    assert not (tmp_path / "row.json").exists()  # it was killed before it finished
    _assert_host_unchanged(before, gone=spaces - before["namespaces in use"])


def test_bench_killed_midway_ends_its_run(tmp_path):
    """SIGKILL the bench command itself mid-run: its run, in a session of its
    own, ends with it, leaving nothing behind."""
    _requires_a_shaped_link()
    before = _host_state()
    bench_cmd = [sys.executable, "-m", "autorestrictor", "bench", "--workloads", "seed-sum",
                 "--modes", "default", "--workers", "2", "--link", RATE]
    proc = _start_run(tmp_path, bench_cmd)
    try:
        run = wait_for(lambda: next(iter(_group_children(proc.pid)), None), 60,
                          "the bench to start its run")
        spaces = wait_for(lambda: _run_namespaces(run, 2), 60,
                             "the run's namespaces and workers")
    finally:
        proc.kill()
        proc.wait()
    # at once: the run itself would go on for tens of seconds
    wait_for(lambda: not _group(run), 5, "the run's processes to end")
    _assert_host_unchanged(before, gone=spaces - before["namespaces in use"])


def _group_children(parent: int) -> list[int]:
    """Children of ``parent`` that lead process groups of their own (its runs)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == parent and os.getpgid(int(pid)) == int(pid):
                out.append(int(pid))
        except (OSError, ValueError):
            continue
    return out


def test_demo_names_the_link():
    from autorestrictor.tools.demo import format_side_by_side

    shaped = {"rate": "1gbit", "shape": "shared", "bits_per_s": 1e9, "probe_bytes_per_s": 1e8}
    rows = [{"mode": mode, "workers": 4, "scale": 1.0, "wall_s": wall, "bytes_moved": 1e9,
             "transfers": 10, "peak_memory_bytes": 1e8, "max_share": 0.25, "plan_s": 0.0,
             "checksum": "c", "link": shaped}
            for mode, wall in (("default", 10.0), ("autorestrictor", 5.0))]
    table = format_side_by_side(rows)
    assert table.splitlines()[-1].startswith(
        "seed-sum, 4 workers x 1 thread, scale 1.0, link 1gbit shared;")
    assert "5.00 (0.50x)" in table


def test_bench_without_the_capability_stops_before_any_run():
    """Root without CAP_SYS_ADMIN and CAP_NET_ADMIN (dropped from the bounding
    set): ``unshare`` is refused, and the bench says so and runs nothing."""
    requires("root, the link tools and setpriv", link_missing(tools=("setpriv",)))
    done = subprocess.run(
        ["setpriv", "--bounding-set", "-sys_admin,-net_admin", sys.executable, "-m",
         "autorestrictor", "bench", "--workloads", "seed-sum", "--link", "1gbit"],
        env=bench.child_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done
    assert "error: cannot create a network namespace (unshare -n)" in done.stderr, done.stderr
    assert "Operation not permitted" in done.stderr and "[1/" not in done.stderr
