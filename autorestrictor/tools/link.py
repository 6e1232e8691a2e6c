"""The bench on a shaped network: private network namespaces and token buckets.

A bench run with a link (``python -m autorestrictor bench --link 1gbit``)
runs in a child process started under ``unshare --net``: a network
namespace of its own, unnamed, which the kernel destroys with the last
process in it. Nothing is created in the host's namespace and nothing is
named (no ``ip netns add``), so a run that is killed leaves nothing behind:
its processes die with its process group, and its namespaces, bridge and
veth pairs die with them.

Two shapes (:data:`SHAPES`):

``shared``
    The whole ``LocalCluster`` (scheduler, client, workers) talks over the
    child's loopback, shaped by one token bucket (``tc ... tbf``): every
    transfer in the cluster shares one link of the given rate, as on a
    single shared segment or one congested uplink.
``per-worker``
    Each worker runs in a namespace of its own (held by a small
    :class:`NetnsHolder` process), joined to a bridge in the child's
    namespace (the "switch") by a veth pair shaped in both directions: one
    full-duplex link of the given rate per worker, as each node of a real
    cluster has its own network card. The scheduler and the client sit on
    the switch itself, without a link of their own: what they exchange with
    a worker crosses that worker's link only (a head node with a much faster
    link than its workers).

:func:`check_support` fails at once, saying what is missing, when the
machine cannot do this (not root, no ``unshare``/``tc``, no ``tbf`` in the
kernel), and :func:`probe_link` measures the link before every run, so a
bench never silently measures an unshaped network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SHAPES = ("shared", "per-worker")

#: tc's rate units, in bits per second ("bps" is bytes per second in tc).
RATE_UNITS = {
    "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
    "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
}

#: Longest a packet may wait in a token bucket's queue before it is dropped;
#: sets the queue's length (tc's ``latency``). 50 ms is a deep switch buffer.
LATENCY = "50ms"

#: Smallest bucket, in bytes: twice the largest packet (the loopback's MTU
#: is 64 KiB; a packet larger than the bucket is dropped, every time, and its
#: connection stalls). Otherwise the bucket holds 2 ms of the rate (250 KB
#: at 1 Gbit/s): a kernel tick's worth of packets must fit in it, or the
#: bucket caps the rate below what was asked.
MIN_BURST = 128 * 1024

#: Addresses on the per-worker bridge: the switch (scheduler, client) is .1,
#: worker ``i`` is ``.(i + 2)``.
SUBNET = "10.77.0"
SWITCH_IP = f"{SUBNET}.1"
BRIDGE = "arbr0"
MAX_WORKERS = 250

#: A probe faster than this many times the rate means the link is not shaped.
PROBE_TOLERANCE = 1.5

#: Directory that contains the ``autorestrictor`` package, put on the
#: workers' ``PYTHONPATH`` so that they import this tree.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class LinkError(RuntimeError):
    """The shaped link cannot be built, or is not what was asked for."""


def parse_rate(text: str) -> float:
    """Bits per second of a tc rate such as ``1gbit``, ``250mbit``, ``100mbps``.

    Raises
    ------
    ValueError
        Naming the rate, when it is not a positive number followed by one of
        tc's units (:data:`RATE_UNITS`).
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*", str(text).lower())
    if not match or match.group(2) not in RATE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(
            f"bad link rate {text!r}: expected a positive number and one of tc's units "
            f"({', '.join(RATE_UNITS)}), e.g. '1gbit' or '250mbit'"
        )
    return float(match.group(1)) * RATE_UNITS[match.group(2)]


@dataclass(frozen=True)
class Link:
    """A shaped link: a tc rate and a shape from :data:`SHAPES`."""

    rate: str
    shape: str = "per-worker"

    def __post_init__(self):
        parse_rate(self.rate)
        if self.shape not in SHAPES:
            raise ValueError(f"bad link shape {self.shape!r}; known: {', '.join(SHAPES)}")

    @property
    def bits_per_s(self) -> float:
        return parse_rate(self.rate)

    @property
    def burst_bytes(self) -> int:
        return max(MIN_BURST, int(self.bits_per_s / 8 * 0.002))

    def label(self) -> str:
        return f"{self.rate} {self.shape}"

    def tbf(self, dev: str) -> list[str]:
        """The ``tc`` command that shapes ``dev``'s outgoing traffic."""
        return ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", self.rate,
                "burst", str(self.burst_bytes), "latency", LATENCY]


# --------------------------------------------------------------------------
# commands


def _run(cmd: list[str], what: str) -> str:
    """Run ``cmd``; raise :class:`LinkError` saying ``what`` failed, with its stderr."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LinkError(f"{what}: {' '.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        raise LinkError(f"{what}: {' '.join(cmd)} exited with {done.returncode}: "
                        f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def in_netns(pid: int, cmd: list[str]) -> list[str]:
    """``cmd`` run in the network namespace of process ``pid``."""
    return ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *cmd]


def netns_id(pid: int | str = "self") -> int:
    """Inode number of a process's network namespace (equal inodes: same namespace)."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def check_support(link: Link) -> None:
    """Fail at once, saying what is missing, if this machine cannot build ``link``.

    Needs root (network namespaces and qdiscs need ``CAP_NET_ADMIN``),
    ``unshare``, ``nsenter``, ``ip`` and ``tc`` on ``PATH``, the kernel's
    ``tbf`` qdisc and, for ``per-worker``, veth pairs and bridges. Each check
    runs in a throwaway namespace that dies with its command.

    Raises
    ------
    LinkError
        Naming the missing piece and what the system said.
    """
    if os.geteuid() != 0:
        raise LinkError(f"--link needs root: it creates network namespaces and qdiscs "
                        f"(CAP_NET_ADMIN); this process runs as uid {os.geteuid()}")
    for tool in ("unshare", "nsenter", "ip", "tc"):
        if shutil.which(tool) is None:
            raise LinkError(f"--link needs '{tool}' on PATH (util-linux / iproute2)")
    _run(["unshare", "--net", "--", "true"], "cannot create a network namespace (unshare -n)")
    _run(["unshare", "--net", "--", "sh", "-c",
          "ip link set lo up && " + " ".join(link.tbf("lo"))],
         "cannot shape a link with a token bucket (does the kernel have the tbf qdisc?)")
    if link.shape == "per-worker":
        _run(["unshare", "--net", "--", "sh", "-c",
              "ip link add t0 type veth peer name t1 && ip link add t2 type bridge"],
             "cannot create veth pairs and bridges (per-worker links)")


def require_private_netns() -> None:
    """Refuse to touch a network that is not this run's own.

    The bench shapes the namespace it runs in; run outside one made for it
    (``unshare --net``, see :func:`child_prefix`), that would be the host's.
    """
    if netns_id() == netns_id(os.getppid()):
        raise LinkError("refusing to shape the network: this process shares its parent's "
                        "network namespace (start it under 'unshare --net', as run_one does)")


def child_prefix(link: Link | None) -> list[str]:
    """Command prefix that starts a bench child in a network namespace of its own."""
    return [] if link is None else ["unshare", "--net", "--"]


def add_tbf(dev: str, link: Link, pid: int | None = None) -> None:
    """Shape ``dev``'s outgoing traffic (in ``pid``'s namespace, else this one); check it."""
    wrap = (lambda cmd: in_netns(pid, cmd)) if pid else (lambda cmd: cmd)
    _run(wrap(link.tbf(dev)), f"cannot shape {dev}")
    shown = _run(wrap(["tc", "qdisc", "show", "dev", dev]), f"cannot read {dev}'s qdisc")
    if "tbf" not in shown:
        raise LinkError(f"{dev} is not shaped after tc added a tbf qdisc: {shown.strip()!r}")


def shape_loopback(link: Link) -> str:
    """``shared``: shape this namespace's loopback; returns the address to use."""
    require_private_netns()
    _run(["ip", "link", "set", "lo", "up"], "cannot bring up the loopback")
    add_tbf("lo", link)
    return "127.0.0.1"


def make_switch() -> str:
    """``per-worker``: a bridge in this namespace, addressed ``SWITCH_IP``; returns it."""
    require_private_netns()
    for cmd in (["ip", "link", "set", "lo", "up"],
                ["ip", "link", "add", BRIDGE, "type", "bridge"],
                ["ip", "addr", "add", f"{SWITCH_IP}/24", "dev", BRIDGE],
                ["ip", "link", "set", BRIDGE, "up"]):
        _run(cmd, "cannot build the switch")
    return SWITCH_IP


# --------------------------------------------------------------------------
# one namespace per worker


class NetnsHolder:
    """A process that holds a new network namespace until :meth:`close`.

    It is ``cat`` reading a pipe from this process: it exits when the pipe
    closes, so it also goes when this process dies, however it dies.
    """

    def __init__(self):
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "echo ready && exec cat > /dev/null"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            self.proc.kill()
            raise LinkError(f"the namespace holder did not start: {self.proc.stderr.read()!r}")
        self.pid = self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.warning("namespace holder %d ignored its closed pipe; killed", self.pid)
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def attach(index: int, link: Link) -> tuple[NetnsHolder, str]:
    """A namespace joined to the switch by a veth pair shaped both ways.

    Returns the holder and the address of the namespace's end, ``.(index + 2)``
    on the bridge's subnet.
    """
    if not 0 <= index < MAX_WORKERS:
        raise LinkError(f"worker index {index} out of range: at most {MAX_WORKERS} workers")
    holder = NetnsHolder()
    try:
        outer, inner, address = f"arv{index}", f"arw{index}", f"{SUBNET}.{index + 2}"
        for cmd in (["ip", "link", "add", outer, "type", "veth", "peer", "name", inner],
                    ["ip", "link", "set", inner, "netns", str(holder.pid)],
                    ["ip", "link", "set", outer, "master", BRIDGE, "up"]):
            _run(cmd, f"cannot link worker {index} to the switch")
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", f"{address}/24", "dev", inner],
                    ["ip", "link", "set", inner, "up"]):
            _run(in_netns(holder.pid, cmd), f"cannot set up worker {index}'s network")
        add_tbf(outer, link)  # towards the worker
        add_tbf(inner, link, pid=holder.pid)  # from the worker
    except BaseException:
        holder.close()
        raise
    return holder, address


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [PACKAGE_PARENT, env.get("PYTHONPATH")] if p)
    return env


def _namespaced_worker_class():
    """:class:`NamespacedWorker`, defined on first use (imports ``distributed``)."""
    from distributed.deploy.spec import ProcessInterface

    class NamespacedWorker(ProcessInterface):
        """A ``dask worker`` process (one thread, no nanny; ``memory_limit`` bytes,
        0 for none) in a namespace of its own, behind a shaped link; a
        ``SpecCluster`` worker spec.  Without a nanny nothing terminates a
        worker over its limit, but it spills and pauses as usual."""

        def __init__(self, scheduler: str, name: Any, link: Link, log_dir: str,
                     memory_limit: int = 0):
            super().__init__(scheduler=scheduler, name=name)
            self.scheduler, self.name, self.link, self.log_dir = scheduler, name, link, log_dir
            self.memory_limit = memory_limit
            self.holder: NetnsHolder | None = None
            self.proc: subprocess.Popen | None = None
            self.log: str | None = None

        def _launch(self) -> None:
            self.holder, address = attach(int(self.name), self.link)
            cmd = [sys.executable, "-m", "distributed.cli.dask_worker", self.scheduler,
                   "--name", str(self.name), "--nthreads", "1",
                   "--memory-limit", str(int(self.memory_limit)),
                   "--no-nanny", "--no-dashboard", "--host", address]
            self.log = os.path.join(self.log_dir, f"worker-{self.name}.log")
            with open(self.log, "w") as log:
                self.proc = subprocess.Popen(in_netns(self.holder.pid, cmd), env=_worker_env(),
                                             stdout=log, stderr=subprocess.STDOUT)

        def _stop(self) -> None:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    logger.warning("worker %s did not stop within 10 s of SIGTERM; killed",
                                   self.name)
                    self.proc.kill()
                    self.proc.wait()
            if self.holder is not None:
                self.holder.close()

        async def start(self):
            await asyncio.to_thread(self._launch)
            await super().start()

        async def close(self):
            await asyncio.to_thread(self._stop)
            await super().close()

    return NamespacedWorker


@contextlib.contextmanager
def namespaced_cluster(n_workers: int, link: Link, memory_limit: int = 0):
    """A ``SpecCluster``: the scheduler in this process on the switch, each worker
    in its own namespace behind a shaped link, with ``memory_limit`` bytes (0:
    none). ``cluster.scale(n)`` adds workers the same way. Yields the cluster;
    every namespace is gone when it exits."""
    from distributed import Scheduler, SpecCluster

    host = make_switch()
    with tempfile.TemporaryDirectory(prefix="autorestrictor-link-") as log_dir:
        worker = {"cls": _namespaced_worker_class(),
                  "options": {"link": link, "log_dir": log_dir,
                              "memory_limit": memory_limit}}
        scheduler = {"cls": Scheduler,
                     "options": {"host": host, "port": 0, "dashboard": False,
                                 "dashboard_address": None}}
        with SpecCluster(workers={i: worker for i in range(n_workers)}, scheduler=scheduler,
                         worker=worker, silence_logs=logging.WARN) as cluster:
            yield cluster


def worker_logs(cluster, lines: int = 20) -> str:
    """The last lines of each namespaced worker's log (for error messages)."""
    out = []
    for name, w in sorted(cluster.workers.items(), key=lambda kv: str(kv[0])):
        path = getattr(w, "log", None)
        if path and os.path.exists(path):
            with open(path) as f:
                tail = f.read().splitlines()[-lines:]
            out.append(f"--- worker {name} ---\n" + "\n".join(tail))
    return "\n".join(out)


# --------------------------------------------------------------------------
# checking the link is real


def _send_probe(host: str, port: int, nbytes: int) -> int:
    """Run on a worker: send ``nbytes`` to ``host:port``."""
    block = b"\0" * (1 << 20)
    with socket.create_connection((host, port), timeout=60) as sock:
        left = nbytes
        while left > 0:
            sock.sendall(block[: min(left, len(block))])
            left -= len(block)
    return nbytes


def probe_link(client, link: Link, host: str) -> dict[str, Any]:
    """Measure one worker's throughput to ``host`` (the scheduler's side).

    A worker sends enough bytes for 0.3 s at the link's rate (at least 8
    buckets) over a plain socket to a listener in this process.

    Returns
    -------
    dict
        The link's ``rate``, ``shape``, ``bits_per_s`` and the measured
        ``probe_bytes_per_s``.

    Raises
    ------
    LinkError
        If the measured rate is above ``PROBE_TOLERANCE`` times the link's:
        the link is not shaped.
    """
    nbytes = max(8 * link.burst_bytes, int(link.bits_per_s / 8 * 0.3))
    received: dict[str, float] = {}
    with socket.create_server((host, 0)) as server:
        server.settimeout(60)
        port = server.getsockname()[1]

        def receive():
            conn, _ = server.accept()
            with conn:
                start, total = time.perf_counter(), 0
                while chunk := conn.recv(1 << 20):
                    total += len(chunk)
                received.update(bytes=total, seconds=time.perf_counter() - start)

        thread = threading.Thread(target=receive, name="link-probe", daemon=True)
        thread.start()
        first = min(client.scheduler_info(n_workers=-1)["workers"])
        client.run(_send_probe, host, port, nbytes, workers=[first])
        thread.join(60)
    if received.get("bytes") != nbytes:
        raise LinkError(f"the link probe received {received.get('bytes')} of {nbytes} bytes")
    measured = received["bytes"] / received["seconds"]
    asked = link.bits_per_s / 8
    if measured > PROBE_TOLERANCE * asked:
        raise LinkError(f"the link is not shaped: a worker sent {measured / 1e6:.0f} MB/s "
                        f"where {link.rate} allows {asked / 1e6:.0f} MB/s")
    if measured < asked / 3:
        logger.warning("the %s link carried only %.0f MB/s of %.0f MB/s (busy CPU?)",
                       link.rate, measured / 1e6, asked / 1e6)
    return {"rate": link.rate, "shape": link.shape, "bits_per_s": link.bits_per_s,
            "probe_bytes_per_s": measured}
