"""A plain ``pip install`` (no extras) gives a working plugin, and nothing more.

Runs in a fresh virtual environment, so a dependency the plugin imports but
``pyproject.toml`` does not declare fails here, not on a user's cluster.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The tools' dependencies: a scheduler image must not need them.
NOT_WANTED = {"pandas", "pyarrow", "matplotlib", "bokeh"}

SCRIPT = r"""
import json, sys
import dask
from distributed import Client, LocalCluster
import autorestrictor
from autorestrictor import AutoRestrictor

def inc(x):
    return x + 1

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(AutoRestrictor(min_tasks=10))
        xs = [dask.delayed(inc)(i) for i in range(40)]
        ys = [dask.delayed(inc)(x) for x in xs]
        pairs = [dask.delayed(sum)(ys[i : i + 2]) for i in range(0, 40, 2)]
        total = dask.delayed(sum)(pairs)
        result = total.compute()
        plans = autorestrictor.last_plans(client)
    json.dump({"result": result, "plans": plans}, sys.stdout, default=str)
"""


def _run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}"
    return proc


def test_plain_install_runs_the_plugin(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT),
         timeout=600)
    listed = _run(python, "-m", "pip", "list", "--format=json").stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "dask-autorestrictor" in installed and "distributed" in installed
    assert not installed & NOT_WANTED, "the plain install pulled in the tools' dependencies"

    script = tmp_path / "e2e.py"
    script.write_text(SCRIPT)
    out = json.loads(_run(python, str(script), cwd=tmp_path, timeout=300).stdout)
    assert out["result"] == sum(range(2, 42))
    applied = [p for p in out["plans"] if p["reason"] is None]
    assert applied and applied[0]["n_pinned"] > 0, out["plans"]
