"""Tools around the plugin: the benchmark, its workloads, the demo and the
planner-at-scale bench.

Nothing in the plugin or the planner imports this subpackage; only the
command line (``python -m autorestrictor``) and the tests do. Its extra
dependencies come with ``pip install "dask-autorestrictor[bench]"`` (or
``[demo]``).
"""
