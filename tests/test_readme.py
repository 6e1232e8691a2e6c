"""The README is the front door for a Dask user: short, no internal history,
a configuration table that matches the schema, and links that resolve.

Each check is a function returning the problems it finds, so that it is
tested twice: on the README (no problem) and on a small text made to break
it (the problem it names), which shows the check can fail for its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 250

#: The one upstream reference a user may read: the pull request the plugin
#: started from.
UPSTREAM_PR = "dask/distributed#4864"
#: Words that point at the project's own history rather than at the user's
#: cluster: its issue tracker and its earlier runs.
#: Upstream pull requests, which the documentation may cite.
DASK_PR = r"dask/(?:dask|distributed)#\d+"
HISTORY_WORDS = re.compile(
    r"\bissues?\b|\bthis release\b|\bprevious release\b|\bthis session\b", re.IGNORECASE
)
ISSUE_NUMBER = re.compile(r"#\d+")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)


def _schema_and_defaults(root: Path = ROOT) -> tuple[dict, dict]:
    here = root / "autorestrictor"
    schema = yaml.safe_load((here / "autorestrictor-schema.yaml").read_text())
    defaults = yaml.safe_load((here / "autorestrictor.yaml").read_text())
    return (
        schema["properties"]["autorestrictor"]["properties"],
        defaults["autorestrictor"],
    )


def _words(text: str) -> str:
    return " ".join(text.split())


# -- the checks -------------------------------------------------------------


def length_problems(text: str, limit: int = MAX_LINES) -> list[str]:
    n = len(text.splitlines())
    return [f"README has {n} lines, more than {limit}"] if n > limit else []


def history_problems(text: str, upstream: str = re.escape(UPSTREAM_PR)) -> list[str]:
    """Issue numbers and words about our own history, line by line; references
    matching the regular expression ``upstream`` are allowed."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in ISSUE_NUMBER.finditer(re.sub(upstream, "", line)):
            problems.append(f"line {n}: issue reference {m.group()!r}")
        for m in HISTORY_WORDS.finditer(line):
            problems.append(f"line {n}: internal history {m.group()!r}")
    return problems


def config_table(text: str) -> dict[str, tuple[str, str]]:
    """``option -> (default cell, meaning cell)`` from the table whose
    header row starts with ``| option | default | meaning |``."""
    rows: dict[str, tuple[str, str]] = {}
    lines = text.splitlines()
    header = re.compile(r"^\|\s*option\s*\|\s*default\s*\|\s*meaning\s*\|\s*$")
    starts = [i for i, line in enumerate(lines) if header.match(line)]
    if len(starts) != 1:
        raise AssertionError(f"expected one configuration table, found {len(starts)}")
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            raise AssertionError(f"configuration row without 3 cells: {line!r}")
        option, default, meaning = cells
        rows[option.strip("`")] = (default.strip("`"), meaning)
    return rows


def config_problems(text: str, root: Path = ROOT) -> list[str]:
    props, defaults = _schema_and_defaults(root)
    rows = config_table(text)
    problems = []
    for key in sorted(set(props) - set(rows)):
        problems.append(f"option {key!r} of the schema is missing from the table")
    for key in sorted(set(rows) - set(props)):
        problems.append(f"option {key!r} of the table is not in the schema")
    for key in sorted(set(rows) & set(props)):
        cell, meaning = rows[key]
        value, expected = yaml.safe_load(cell), defaults[key]
        if type(value) is not type(expected) or value != expected:
            problems.append(
                f"option {key!r}: the table's default {cell!r} is not the YAML's {expected!r}"
            )
        if _words(meaning) != _words(props[key]["description"]):
            problems.append(f"option {key!r}: the table's meaning is not the schema's description")
    return problems


def link_problems(text: str, base: Path = ROOT) -> list[str]:
    problems = []
    for m in LINK.finditer(FENCE.sub("", text)):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL, or an anchor in the README itself
        path = target.split("#", 1)[0]
        if not (base / path).exists():
            problems.append(f"link to {target!r}: no such file")
    return problems


# -- on the README ----------------------------------------------------------


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


def test_readme_is_short(readme):
    assert length_problems(readme) == []


def test_readme_has_no_issue_numbers_or_internal_history(readme):
    assert history_problems(readme) == []


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    + ["CHANGELOG.md"],
)
def test_docs_and_changelog_have_no_issue_numbers_or_internal_history(path):
    # Dask's own pull requests may be cited there, by their full name.
    assert history_problems((ROOT / path).read_text(), upstream=DASK_PR) == []


def test_config_table_is_the_schema_with_the_yaml_defaults(readme):
    props, _ = _schema_and_defaults()
    assert set(config_table(readme)) == set(props)  # the table was found, whole
    assert config_problems(readme) == []


def test_every_relative_link_and_image_exists(readme):
    targets = [m.group(1) for m in LINK.finditer(FENCE.sub("", readme))]
    assert any(t.endswith(".png") for t in targets), "the README shows no picture"
    assert link_problems(readme) == []


# -- the checks catch what they name ------------------------------------------


def test_length_check_fails_on_a_long_text():
    assert length_problems("line\n" * (MAX_LINES + 1)) == [
        f"README has {MAX_LINES + 1} lines, more than {MAX_LINES}"
    ]
    assert length_problems("line\n" * MAX_LINES) == []


@pytest.mark.parametrize(
    "line, found",
    [
        ("Fixed in #17.", "'#17'"),
        ("See dask/distributed#6598.", "'#6598'"),
        ("Issue 17 asked for 0.6x.", "'Issue'"),
        ("as in the previous release", "'previous release'"),
        ("measured in this release's run", "'this release'"),
        ("as measured this session", "'this session'"),
    ],
)
def test_history_check_names_what_it_found(line, found):
    problems = history_problems(f"fine\n{line}\n")
    assert problems and all(p.startswith("line 2:") for p in problems)
    assert any(found in p for p in problems)


def test_history_check_allows_the_upstream_pull_request():
    assert history_problems(f"It began as [{UPSTREAM_PR}](https://github.com).") == []
    assert history_problems("see dask/distributed#6598") == ["line 1: issue reference '#6598'"]
    assert history_problems("see dask/distributed#6598", upstream=DASK_PR) == []


def _table(rows: dict[str, tuple[str, str]]) -> str:
    body = "".join(f"| `{k}` | `{d}` | {m} |\n" for k, (d, m) in rows.items())
    return "| option | default | meaning |\n|---|---|---|\n" + body + "\nafter\n"


def _good_rows() -> dict[str, tuple[str, str]]:
    props, defaults = _schema_and_defaults()
    dump = {True: "true", False: "false"}
    return {
        k: (dump[v] if isinstance(v, bool) else str(v), _words(props[k]["description"]))
        for k, v in defaults.items()
    }


def test_config_check_passes_a_table_built_from_the_schema():
    assert config_problems(_table(_good_rows())) == []


def test_config_check_names_a_missing_option():
    rows = _good_rows()
    del rows["history"]
    assert config_problems(_table(rows)) == [
        "option 'history' of the schema is missing from the table"
    ]


def test_config_check_names_an_unknown_option():
    rows = {**_good_rows(), "speed": ("1", "Go faster.")}
    assert config_problems(_table(rows)) == ["option 'speed' of the table is not in the schema"]


@pytest.mark.parametrize("cell", ["200", "100.0", "'100'"])
def test_config_check_names_a_wrong_default(cell):
    rows = _good_rows()
    rows["min-tasks"] = (cell, rows["min-tasks"][1])
    assert config_problems(_table(rows)) == [
        f"option 'min-tasks': the table's default {cell!r} is not the YAML's 100"
    ]


def test_config_check_names_a_meaning_that_differs_from_the_schema():
    rows = _good_rows()
    rows["history"] = (rows["history"][0], "Number of plans kept.")
    assert config_problems(_table(rows)) == [
        "option 'history': the table's meaning is not the schema's description"
    ]


def test_config_check_needs_the_table():
    with pytest.raises(AssertionError, match="found 0"):
        config_problems("no table here\n")


def test_link_check_names_a_missing_file():
    text = (
        "![picture](docs/demo.png) [gone](docs/gone.md#part) [web](https://dask.org)\n"
        "[anchor](#configuration)\n```\n[in code](nowhere.md)\n```\n"
    )
    assert link_problems(text) == ["link to 'docs/gone.md#part': no such file"]
