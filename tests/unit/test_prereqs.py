"""``make``'s install steps (``embedded/prereqs.py``) as a fresh machine would run them: the package list for
each tool present or absent, the rounds (npm only after nodejs), and ``apt-get install -s`` of what it
computes on this machine."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest

from embedded import prereqs
from embedded.prereqs import GROUPS, PrereqError, Tool, packages_to_install

BROWSER = GROUPS["browser"]
NAMES = [tool.name for tool in BROWSER]


@pytest.mark.parametrize("present_set", list(itertools.product([True, False], repeat=len(BROWSER))))
def test_each_missing_tool_and_only_it_is_asked_for(present_set: tuple[bool, ...]) -> None:
    present = dict(zip(NAMES, present_set, strict=True))
    packages = packages_to_install(BROWSER, present, nodesource=False)
    for tool in BROWSER:
        asked = tool.package in packages
        if present[tool.name]:
            assert not asked, f"{tool.name} is present but its package {tool.package} is asked for"
        elif tool.name == "npm" and not present["node"]:
            assert not asked, "npm must wait for the round after nodejs: that nodejs may ship its own"
        else:
            assert asked, f"{tool.name} is missing but {tool.package} is not asked for: {packages}"


def test_the_images_nodesource_node_with_its_npm_is_kept_and_debians_npm_never_asked_for() -> None:
    """The bug of issue 21: chromium and firefox-esr missing asked for nodejs and npm too (npm conflicts)."""
    present = {"chromium": False, "curl": True, "firefox-esr": False, "node": True, "npm": True}
    assert packages_to_install(BROWSER, present, nodesource=True) == ["chromium", "firefox-esr"]


def test_a_nodesource_node_without_npm_is_reported_not_replaced() -> None:
    present = {"chromium": True, "curl": True, "firefox-esr": True, "node": True, "npm": False}
    with pytest.raises(PrereqError, match="NodeSource's nodejs, which ships its own npm"):
        packages_to_install(BROWSER, present, nodesource=True)
    assert packages_to_install(BROWSER, present, nodesource=False) == ["npm"]  # Debian's node: Debian's npm


def test_ensure_installs_in_rounds_says_what_and_probes_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with no browser and no node: round 1 installs chromium, firefox-esr, nodejs; this nodejs
    (Debian's) has no npm, so round 2 installs npm; then everything probes present."""
    on_machine = {"curl"}
    tools = tuple(
        Tool(t.name, t.package, (lambda name=t.name: f"/usr/bin/{name}" if name in on_machine else None), t.needs)
        for t in BROWSER
    )
    provides = {"chromium": "chromium", "firefox-esr": "firefox-esr", "nodejs": "node", "npm": "npm"}
    commands: list[list[str]] = []

    def run(command: list[str]) -> None:
        commands.append(command)
        if "install" in command:
            on_machine.update(provides[p] for p in command[command.index("-qq") + 1 :])

    monkeypatch.setitem(GROUPS, "browser", tools)
    monkeypatch.setattr(prereqs, "node_is_nodesource", lambda: False)
    monkeypatch.setattr(prereqs, "_warn_old_node", lambda say: None)
    said: list[str] = []
    assert prereqs.ensure("browser", say=said.append, run=run) == ["chromium", "firefox-esr", "nodejs", "npm"]
    installs = [c[c.index("-qq") + 1 :] for c in commands if "install" in c]
    assert installs == [["chromium", "firefox-esr", "nodejs"], ["npm"]]
    assert sum("update" in c for c in commands) == 1
    assert said[0] == "browser: curl present (/usr/bin/curl), kept as it is"
    assert "browser: chromium, firefox-esr, node missing: installing Debian's chromium firefox-esr nodejs ..." in said
    assert said[-1] == "browser: installed chromium firefox-esr nodejs npm"


def test_ensure_on_a_machine_that_has_everything_runs_no_command(monkeypatch: pytest.MonkeyPatch) -> None:
    tools = tuple(Tool(t.name, t.package, lambda: "/usr/bin/x", t.needs) for t in BROWSER)
    monkeypatch.setitem(GROUPS, "browser", tools)
    monkeypatch.setattr(prereqs, "_warn_old_node", lambda say: None)
    commands: list[list[str]] = []
    assert prereqs.ensure("browser", say=lambda _: None, run=commands.append) == []
    assert commands == []


def test_a_tool_still_missing_after_its_install_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GROUPS, "postgres", (Tool("initdb", "postgresql", lambda: None),))
    with pytest.raises(PrereqError, match="postgres: still missing after installing .*postgresql.*: initdb"):
        prereqs.ensure("postgres", say=lambda _: None, run=lambda _: None)


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="not a Debian machine: make's installs do not apply")
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_what_it_computes_on_this_machine_apt_can_install(group: str) -> None:
    """``apt-get install -s`` (simulate) of the group's packages as this machine would need them with every
    tool absent (the first round: npm waits for the nodejs apt picks), and as it needs them now: no
    conflict ("held broken packages") either way."""
    nodesource = prereqs.node_is_nodesource()
    tools = GROUPS[group]
    absent = packages_to_install(tools, {t.name: False for t in tools}, nodesource=nodesource)
    now = packages_to_install(tools, {t.name: t.probe() is not None for t in tools}, nodesource=nodesource)
    for packages in (absent, now):
        if not packages:
            continue
        done = subprocess.run(["apt-get", "install", "-s", *packages], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"apt-get install -s {' '.join(packages)}:\n{done.stdout[-1500:]}{done.stderr}"
