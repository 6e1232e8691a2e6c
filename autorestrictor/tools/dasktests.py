"""``python -m autorestrictor dasktests``: distributed's own tests, with and without the plugin.

The runner copies the test files of a dask/distributed source tree (a checkout,
or a git directory read with ``git archive``; it downloads nothing) into a
temporary directory, with the repository's root ``conftest.py`` and
``pyproject.toml`` (pytest's markers, ``filterwarnings`` and ``--runslow``),
and runs them with pytest against the *installed* distributed, once per mode:

``without``
    plain Dask;
``with``
    the plugin preloaded on every scheduler (``distributed.scheduler.preload``)
    and ``autorestrictor.min-tasks`` 2, through ``DASK_*`` environment variables.
    ``dask`` reads them when it is imported, so they are part of the config
    that distributed's test utilities restore before every test.

Each file runs in its own pytest process. This module is also the pytest
plugin (``-p autorestrictor.tools.dasktests``) that records, per test, its
outcome and how many schedulers installed the plugin and how many plans it
applied (``autorestrictor`` events), to a JSON-lines file. The runner then
compares the two modes and writes ``results-<mode>.json`` and
``comparison.md``; see ``docs/dask-tests.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

DEFAULT_FILES = (
    "test_scheduler.py",
    "test_steal.py",
    "test_failed_workers.py",
    "test_resources.py",
    "test_priorities.py",
    "test_cancelled_state.py",
    "test_client.py",
)
MODES: dict[str, dict[str, str]] = {
    "without": {},
    "with": {
        "DASK_DISTRIBUTED__SCHEDULER__PRELOAD": '["autorestrictor"]',
        "DASK_AUTORESTRICTOR__MIN_TASKS": "2",
    },
}

#: Set by the runner for the pytest process: where the plugin appends its records.
LOG_ENV = "AUTORESTRICTOR_DASKTESTS_LOG"

BAD = ("failed", "error", "crashed")  # an xpass fails only if strict, and pytest says so
TESTS_DIR = "distributed/tests"


# -- the test files ----------------------------------------------------------


def is_git_dir(path: Path) -> bool:
    """A bare repository or a ``.git`` directory (not a work tree)."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def git(source: Path, *argv: str, text: bool = True):
    """Run a read-only git command on ``source`` (a git dir or a work tree)."""
    where = ["--git-dir", str(source)] if is_git_dir(source) else ["-C", str(source)]
    out = subprocess.run(["git", *where, *argv], check=True, capture_output=True, text=text)
    return out.stdout


def describe(source: Path) -> dict:
    """The commit the tests come from, or ``unknown`` outside git."""
    try:
        commit = git(source, "rev-parse", "HEAD").strip()
        name = git(source, "describe", "--tags", "HEAD").strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"source": str(source), "commit": "unknown", "describe": "unknown"}
    return {"source": str(source), "commit": commit, "describe": name}


def wanted(names: list[str], files: list[str]) -> list[str]:
    """Root conftest and pyproject, the chosen test files and the TLS certificates."""
    keep = {"conftest.py", "pyproject.toml"} | {f"{TESTS_DIR}/{f}" for f in files}
    certs = [n for n in names if n.startswith(f"{TESTS_DIR}/tls-") and n.endswith(".pem")]
    missing = keep - set(names)
    if missing:
        raise SystemExit(f"not in the source: {sorted(missing)}")
    return sorted(keep) + certs


def export(source: Path, files: list[str], dest: Path) -> None:
    """Lay out ``dest``: conftest.py, pyproject.toml and ``tests/`` (flat)."""
    if is_git_dir(source):
        names = git(source, "ls-tree", "-r", "--name-only", "HEAD").split()
        paths = wanted(names, files)
        data = git(source, "archive", "--format=tar", "HEAD", "--", *paths, text=False)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest / "_export", filter="data")
        root = dest / "_export"
    else:
        names = [str(p.relative_to(source)) for p in (source / TESTS_DIR).iterdir()]
        paths = wanted(names + ["conftest.py", "pyproject.toml"], files)
        root = source
    (dest / "tests").mkdir(parents=True, exist_ok=True)
    for p in paths:
        target = dest / p if "/" not in p else dest / "tests" / Path(p).name
        shutil.copy(root / p, target)
    shutil.rmtree(dest / "_export", ignore_errors=True)


# -- running pytest ----------------------------------------------------------


def mode_env(mode: str, workdir: Path, log: Path) -> dict[str, str]:
    """The environment of one pytest process: the mode's config and nothing else."""
    env = {k: v for k, v in os.environ.items()
           if k != "DASK_DISTRIBUTED__SCHEDULER__PRELOAD"
           and not k.startswith("DASK_AUTORESTRICTOR__")}
    env.update(MODES[mode])
    # worker subprocesses (Nanny) unpickle functions defined in the test modules
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir / "tests"),
                                                      env.get("PYTHONPATH")]))
    env[LOG_ENV] = str(log)
    return env


def build_argv(targets: list[str], args: argparse.Namespace, slow: bool) -> list[str]:
    argv = [sys.executable, "-m", "pytest", *targets, "-p", __name__,
            "--timeout", str(args.timeout), "--timeout-method", "signal",
            "--color=no", "-p", "no:cacheprovider", "-rN"]
    if slow:
        argv.append("--runslow")
    if args.k:
        argv += ["-k", args.k]
    return argv


def run_pytest(argv: list[str], env: dict, cwd: Path, out: Path, limit: float) -> int:
    """Run one pytest process, its output to ``out``; kill it after ``limit`` seconds."""
    with open(out, "w") as f:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -signal.SIGKILL


def run_mode(mode: str, workdir: Path, out: Path, args: argparse.Namespace,
             targets: dict[str, list[str]] | None = None, tag: str = "") -> dict:
    """Run every file (or the given node ids per file) in ``mode``; return the results."""
    name = f"{tag}{mode}"
    log = out / f"{name}.jsonl"
    log.unlink(missing_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    returncodes = {}
    start = time.monotonic()
    for file in args.files:
        if targets is not None and file not in targets:
            continue
        ids = targets[file] if targets is not None else [f"tests/{file}"]
        argv = build_argv(ids, args, slow=file in args.slow)
        t0 = time.monotonic()
        rc = run_pytest(argv, mode_env(mode, workdir, log), workdir,
                        out / "logs" / f"{name}-{file}.log", args.file_timeout)
        returncodes[file] = rc
        note = "" if rc in (0, 1) else f" (pytest did not finish normally: see {name}-{file}.log)"
        print(f"[{name}] {file}: exit {rc} in {time.monotonic() - t0:.0f} s{note}", flush=True)
    results = collect(log)
    results["meta"].update(mode=mode, returncodes=returncodes,
                           seconds=round(time.monotonic() - start))
    (out / f"results-{name}.json").write_text(json.dumps(results, indent=1))
    return results


def collect(log: Path) -> dict:
    """Fold the JSON lines of a mode into ``{"meta": ..., "tests": {nodeid: record}}``."""
    meta: dict = {}
    tests: dict[str, dict] = {}
    lines = log.read_text().splitlines() if log.exists() else []
    for line in lines:
        rec = json.loads(line)
        kind = rec.pop("kind")
        if kind == "meta":
            meta.setdefault("pytest", []).append(rec)
        elif kind == "start":  # a start with no finish: the process died in this test
            tests[rec["nodeid"]] = {"outcome": "crashed", "message": "pytest process died"}
        else:
            tests[rec["nodeid"]] = rec
    return {"meta": meta, "tests": tests}


# -- comparing ---------------------------------------------------------------


def file_of(nodeid: str) -> str:
    return nodeid.split("::")[0].rsplit("/", 1)[-1]


def counts(tests: dict) -> dict[str, Counter]:
    """Per file: how many tests passed, failed, errored, were skipped."""
    per: dict[str, Counter] = {}
    for nodeid, rec in tests.items():
        c = per.setdefault(file_of(nodeid), Counter())
        c[_column(rec["outcome"])] += 1
    return per


def _column(outcome: str) -> str:
    return {"crashed": "failed", "xfailed": "skipped", "xpassed": "passed"}.get(outcome, outcome)


def plugin_only(without: dict, with_: dict) -> list[str]:
    """Tests that fail (or error) with the plugin and do not without it."""
    return sorted(n for n, r in with_.items()
                  if r["outcome"] in BAD and without.get(n, {}).get("outcome") not in BAD)


def table(without: dict, with_: dict) -> str:
    a, b = counts(without), counts(with_)
    cols = ("passed", "failed", "error", "skipped")
    head = ("| file | " + " | ".join(f"without {c}" for c in cols) + " | "
            + " | ".join(f"with {c}" for c in cols) + " | plans applied in |")
    lines = [head, "|" + "---|" * (2 * len(cols) + 2)]
    total_a, total_b = Counter(), Counter()
    for f in sorted(set(a) | set(b)):
        ca, cb = a.get(f, Counter()), b.get(f, Counter())
        total_a += ca
        total_b += cb
        lines.append(_row(f, ca, cb, cols, _planned(with_, f)))
    lines.append(_row("**total**", total_a, total_b, cols, _planned(with_)))
    return "\n".join(lines)


def _row(name: str, ca: Counter, cb: Counter, cols: tuple, planned: int) -> str:
    cells = [str(ca[c]) for c in cols] + [str(cb[c]) for c in cols]
    return f"| {name} | " + " | ".join(cells) + f" | {planned} tests |"


def _planned(tests: dict, file: str | None = None) -> int:
    return sum(1 for n, r in tests.items()
               if r.get("plans_applied") and (file is None or file_of(n) == file))


def report(out: Path) -> str:
    """The comparison of ``results-without.json`` and ``results-with.json``, as Markdown."""
    res = {m: json.loads((out / f"results-{m}.json").read_text()) for m in MODES}
    without, with_ = res["without"]["tests"], res["with"]["tests"]
    only = plugin_only(without, with_)
    rechecks = recheck_summary(out, only)
    faults = sorted(n for n, r in with_.items() if r.get("faults") or r.get("plan_errors"))
    lines = [table(without, with_), "",
             f"Plugin installed on a scheduler in {_count(with_, 'installs')} tests; "
             f"plans applied in {_planned(with_)} tests; plugin faults or failed plans "
             f"in {len(faults)} tests{': ' + ', '.join(faults) if faults else ''}.", "",
             f"## Failing only with the plugin ({len(only)})", ""]
    for n in only:
        r = with_[n]
        lines.append(f"- `{n}`: {r['outcome']} ({without.get(n, {}).get('outcome', 'absent')} "
                     f"without); plans {r.get('plans_applied', 0)}; {r.get('message', '')}")
        if n in rechecks:
            lines.append(f"  - re-run: {rechecks[n]}")
    text = "\n".join(lines) + "\n"
    (out / "comparison.md").write_text(text)
    return text


def _count(tests: dict, field: str) -> int:
    return sum(1 for r in tests.values() if r.get(field))


def recheck(out: Path, workdir: Path, args: argparse.Namespace) -> None:
    """Run the plugin-only failures again, ``args.recheck`` times in each mode."""
    res = {m: json.loads((out / f"results-{m}.json").read_text())["tests"] for m in MODES}
    targets: dict[str, list[str]] = {}
    for n in plugin_only(res["without"], res["with"]):
        targets.setdefault(file_of(n), []).append(n)
    for i in range(args.recheck if targets else 0):
        for m in MODES:
            run_mode(m, workdir, out, args, targets, tag=f"recheck{i}-")


def recheck_summary(out: Path, only: list[str]) -> dict[str, str]:
    """Per plugin-only failure: how often it failed in the re-runs of each mode."""
    bad = {m: Counter() for m in MODES}
    runs = Counter()
    for m in MODES:
        for path in out.glob(f"results-recheck*-{m}.json"):
            tests = json.loads(path.read_text())["tests"]
            runs[m] += 1
            bad[m].update(n for n in only if tests.get(n, {}).get("outcome", "crashed") in BAD)
    if not runs["with"]:
        return {}
    return {n: f"failed {bad['with'][n]}/{runs['with']} with, "
               f"{bad['without'][n]}/{runs['without']} without" for n in only}


# -- command line ------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``dasktests`` options to ``parser``."""
    parser.add_argument("--source", type=Path,
                        help="a dask/distributed checkout, or its git directory "
                             "(exported with git archive); nothing is downloaded")
    parser.add_argument("--files", nargs="+", default=list(DEFAULT_FILES),
                        help="test files under distributed/tests (default: %(default)s)")
    parser.add_argument("--slow", nargs="*", default=None,
                        help="files run with --runslow (default: all selected files)")
    parser.add_argument("-k", default=None, metavar="EXPR", help="pytest -k expression")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds per test (pytest-timeout; default %(default)s)")
    parser.add_argument("--file-timeout", type=float, default=3 * 3600,
                        help="seconds per file before its pytest is killed")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES),
                        help="modes to run (default: both); none compares earlier results")
    parser.add_argument("--recheck", type=int, default=0, metavar="N",
                        help="re-run each plugin-only failure N times in both modes")
    parser.add_argument("--out", type=Path, default=Path("dasktests-results"),
                        help="results directory (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to lay out the tests (default: a temporary directory)")


def main(args: argparse.Namespace) -> int:
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.slow = set(args.files if args.slow is None else args.slow)
    needs_tests = bool(args.modes or args.recheck)
    if needs_tests and args.source is None:
        raise SystemExit("--source is required to run tests (see docs/dask-tests.md)")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dasktests-")).resolve()
    try:
        if needs_tests:
            export(args.source.resolve(), args.files, workdir)
            info = describe(args.source.resolve())
            (args.out / "source.json").write_text(json.dumps(info, indent=1))
            print(f"tests from {info['describe']} ({info['commit']}) in {workdir}", flush=True)
            for old in args.out.glob("results-recheck*.json"):  # they no longer match
                old.unlink()
        for mode in args.modes:
            run_mode(mode, workdir, args.out, args)
        if args.recheck:
            recheck(args.out, workdir, args)
        print(report(args.out))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


# -- the pytest plugin (-p autorestrictor.tools.dasktests) --------------------

_events: Counter = Counter()
_reasons: Counter = Counter()  # why plans were not applied
_current: dict = {}


def _write(record: dict) -> None:
    with open(os.environ[LOG_ENV], "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def pytest_configure(config) -> None:
    # pytest-rerunfailures' mark; the tests run once here (no reruns)
    config.addinivalue_line("markers", "flaky: rerun a flaky test (pytest-rerunfailures)")
    if LOG_ENV not in os.environ:
        return
    import dask.config
    import distributed
    import distributed.utils_test
    from distributed.scheduler import Scheduler

    here = Path(str(config.rootpath)).resolve()
    installed = Path(distributed.__file__).resolve()
    if here in installed.parents:
        raise RuntimeError(f"distributed imported from the test tree: {installed}")
    # get_cert() looks next to the installed package, whose wheel has no tests
    distributed.utils_test.certs_dir = str(here / "tests")
    _patch(Scheduler)
    _write({"kind": "meta", "distributed": distributed.__version__, "path": str(installed),
            "preload": dask.config.get("distributed.scheduler.preload"),
            "min_tasks": dask.config.get("autorestrictor.min-tasks", None)})


def _patch(scheduler_cls) -> None:
    """Count the plugin's installs and events on every in-process scheduler."""
    log_event, add_plugin = scheduler_cls.log_event, scheduler_cls.add_plugin

    def counting_log_event(self, topic, msg):
        if topic == "autorestrictor" and isinstance(msg, dict):
            action = msg.get("action")
            if action == "plan":
                reason = msg.get("reason")
                failed = reason is not None and "failed" in str(reason)
                _events["plans_applied" if reason is None else
                        "plan_errors" if failed else "plans_skipped"] += 1
                if reason is not None:
                    _reasons[str(reason)[:100]] += 1
            elif action == "fault":
                _events["faults"] += 1
        return log_event(self, topic, msg)

    def counting_add_plugin(self, plugin, *a, **kw):
        if type(plugin).__name__ == "AutoRestrictor":
            _events["installs"] += 1
        return add_plugin(self, plugin, *a, **kw)

    scheduler_cls.log_event = counting_log_event
    scheduler_cls.add_plugin = counting_add_plugin


def pytest_collectreport(report) -> None:
    if LOG_ENV in os.environ and report.failed:  # a file that does not collect
        message, crash = _message(report)
        _write({"kind": "test", "nodeid": report.nodeid, "outcome": "error",
                "message": f"collection failed: {message}", "crash": crash,
                "longrepr": report.longreprtext[-6000:]})


def pytest_runtest_logstart(nodeid, location) -> None:
    if LOG_ENV in os.environ:
        _events.clear()
        _reasons.clear()
        _current.clear()
        _current.update(outcome="passed", start=time.monotonic())
        _write({"kind": "start", "nodeid": nodeid})


def pytest_runtest_logreport(report) -> None:
    if LOG_ENV not in os.environ or _current.get("outcome") not in ("passed", None):
        return
    outcome = _outcome(report)
    if outcome != "passed":
        _current["outcome"] = outcome
        _current["message"], _current["crash"] = _message(report)
        _current["longrepr"] = report.longreprtext[-6000:] if report.failed else ""


def _outcome(report) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.skipped:
        return "skipped"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return "passed"


def _message(report) -> tuple[str, str]:
    """The first line of the exception (or skip reason), and where it was raised."""
    lr = report.longrepr
    if isinstance(lr, tuple):  # a skip: (path, lineno, reason)
        return str(lr[2]), f"{lr[0]}:{lr[1]}"
    crash = getattr(lr, "reprcrash", None)
    if crash is None:
        lines = str(lr).strip().splitlines() or [""]
        errors = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
        return (errors or lines)[0], ""
    return (crash.message.splitlines() or [""])[0], f"{crash.path}:{crash.lineno}"


def pytest_runtest_logfinish(nodeid, location) -> None:
    if LOG_ENV not in os.environ:
        return
    rec = {"kind": "test", "nodeid": nodeid, **_current, **_events}
    if _reasons:
        rec["reasons"] = dict(_reasons)
    rec["duration"] = round(time.monotonic() - rec.pop("start"), 2)
    _write(rec)
