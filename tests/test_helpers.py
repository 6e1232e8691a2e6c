"""The tests' own rule for what a machine lacks: skip and say why; under CI, fail."""

from __future__ import annotations

import os

import pytest
from helpers import browser_missing, link_missing, requires

from autorestrictor.tools import screenshots


def test_requires_skips_naming_what_is_missing(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    requires("a thing", None)  # present: nothing happens
    with pytest.raises(pytest.skip.Exception, match="needs a thing: /x not found"):
        requires("a thing", "/x not found")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        requires("a thing", "/x not found")


def test_requires_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    requires("a thing", None)
    with pytest.raises(pytest.fail.Exception, match="needs a thing: /x not found.*CI=true"):
        requires("a thing", "/x not found")


def test_a_missing_browser_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(screenshots, "CHROMIUM", str(tmp_path / "chromium"))
    monkeypatch.setattr(screenshots, "CHROMEDRIVER", str(tmp_path / "chromedriver"))
    missing = browser_missing()
    assert f"{tmp_path / 'chromium'} (chromium)" in missing
    assert f"{tmp_path / 'chromedriver'} (chromium-driver)" in missing


def test_a_missing_link_tool_or_root_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tools at all
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert link_missing() == "unshare, nsenter, ip, tc not on PATH (util-linux / iproute2)"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert link_missing() == "not root (this runs as uid 1000)"
