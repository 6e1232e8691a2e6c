import zlib

import pytest


def _identity(k):
    return k


def _scrambled(k):
    # A different naming scheme with different sort order and type: the plan
    # must depend on the graph's structure, not on its key names.
    # (crc32, not hash(): the same names under every PYTHONHASHSEED)
    return ("renamed", zlib.crc32(repr(("salt", k)).encode()), str(k)[::-1])


@pytest.fixture(params=[_identity, _scrambled], ids=["names", "renamed"])
def rename(request):
    """Rename every key of a test graph (two schemes, as in dask's test_order)."""
    f = request.param

    def apply(deps: dict, **per_key):
        new = {f(k): [f(d) for d in v] for k, v in deps.items()}
        extra = {name: {f(k): v for k, v in m.items()} for name, m in per_key.items()}
        return new, extra, f

    return apply
