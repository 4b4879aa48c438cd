"""What ``make`` installs from Debian: only the packages of tools that are missing, never a working one.

``python3 -m embedded.prereqs GROUP...`` (standard library only: it runs before the venv exists) probes
each tool of the groups, prints what is present (kept as it is) and what it installs, runs
``apt-get install`` for what is missing, and probes again. ``--plan`` prints the packages and installs
nothing. Groups: ``browser`` (make browser), ``postgres`` (make postgres), ``perf-analyzer`` (make bench).

Debian's ``npm`` is asked for only when the ``node`` on the machine is Debian's own: the image ships
NodeSource's ``nodejs``, which carries its own npm and conflicts with Debian's ``npm`` package ("held
broken packages"), so a machine with NodeSource's node and no npm is reported, not "fixed" by apt.
And ``npm`` is never asked for in the same install as ``nodejs``: which nodejs apt picks decides
whether Debian's npm is needed at all, so it is probed again after that install.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Tool:
    name: str
    package: str  # the Debian package that provides it
    probe: Callable[[], str | None]  # where it is (a path, a version), or None when missing
    needs: str | None = None  # a tool that must be present before this one's package is asked for


def _executable(variable: str, default: str) -> Callable[[], str | None]:
    """The path in ``variable`` (as the browser tests read it), else ``default``, if it is executable."""

    def probe() -> str | None:
        path = os.environ.get(variable, default)
        return path if os.access(path, os.X_OK) else None

    return probe


def _on_path(command: str) -> Callable[[], str | None]:
    return lambda: shutil.which(command)


def _postgres() -> str | None:
    """The cluster binaries ``embedded/postgres.py`` runs: Debian's ``/usr/lib/postgresql/N/bin``, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return found[-1] if found else shutil.which("initdb")


def _shared_library(soname: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
        listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=False).stdout
        return next((line.split("=>")[-1].strip() for line in listing.splitlines() if soname in line), None)

    return probe


GROUPS: dict[str, tuple[Tool, ...]] = {
    # The playground's browser tests: Playwright drives chromium; puppeteer-core (npm) drives firefox-esr.
    "browser": (
        Tool("chromium", "chromium", _executable("CHROMIUM", "/usr/bin/chromium")),
        Tool("curl", "curl", _on_path("curl")),  # the copy-as-curl snippet's test runs it
        Tool("firefox-esr", "firefox-esr", _executable("FIREFOX", "/usr/bin/firefox-esr")),
        Tool("node", "nodejs", _on_path("node")),
        Tool("npm", "npm", _on_path("npm"), needs="node"),
    ),
    "postgres": (Tool("initdb", "postgresql", _postgres),),
    # perf_analyzer from the tritonclient 2.51.0 wheel links libb64 (its CUDA runtime is a pip wheel).
    "perf-analyzer": (Tool("libb64.so.0d", "libb64-0d", _shared_library("libb64.so.0d")),),
}


class PrereqError(RuntimeError):
    pass


def node_is_nodesource() -> bool:
    """Whether the installed ``nodejs`` package is NodeSource's (it ships npm; Debian's npm conflicts)."""
    query = ["dpkg-query", "-W", "-f=${Version}", "nodejs"]
    try:
        version = subprocess.run(query, capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return False
    return "nodesource" in version


def packages_to_install(tools: Iterable[Tool], present: Mapping[str, bool], *, nodesource: bool) -> list[str]:
    """The Debian packages to install now, given which tools are present: pure, so tested case by case.

    A tool whose ``needs`` is missing waits for the next round (npm after nodejs). Raises when the only
    fix would replace a working tool.
    """
    packages: list[str] = []
    for tool in tools:
        if present[tool.name] or (tool.needs is not None and not present[tool.needs]):
            continue
        if tool.name == "npm" and nodesource:
            raise PrereqError(
                "npm is missing, but node is NodeSource's nodejs, which ships its own npm and conflicts with "
                "Debian's npm package: restore it with `apt-get install --reinstall nodejs`"
            )
        packages.append(tool.package)
    return packages


def probe(tools: Iterable[Tool]) -> dict[str, str | None]:
    return {tool.name: tool.probe() for tool in tools}


def apt_install(packages: list[str], run: Callable[[list[str]], None], *, update: bool = True) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if update:  # a fresh image's package lists may be missing or stale
        run([*sudo, "apt-get", "update", "-qq"])
    run([*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", *packages])


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def ensure(group: str, *, say: Callable[[str], None] = print, run: Callable[[list[str]], None] = _run) -> list[str]:
    """Install what ``group`` lacks, in rounds (a round's install may provide later tools); what it installed."""
    tools = GROUPS[group]
    installed: list[str] = []
    for round_ in range(len(tools)):
        found = probe(tools)
        if round_ == 0:
            for name, where in found.items():
                if where is not None:
                    say(f"{group}: {name} present ({where}), kept as it is")
        present = {name: where is not None for name, where in found.items()}
        packages = packages_to_install(tools, present, nodesource=node_is_nodesource())
        if not packages:
            break
        missing = [tool.name for tool in tools if not present[tool.name] and tool.package in packages]
        say(f"{group}: {', '.join(missing)} missing: installing Debian's {' '.join(packages)} ...")
        apt_install(packages, run, update=not installed)
        installed += packages
    still = [name for name, where in probe(tools).items() if where is None]
    if still:
        raise PrereqError(f"{group}: still missing after installing {installed or 'nothing'}: {', '.join(still)}")
    if installed:
        say(f"{group}: installed {' '.join(installed)}")
    if group == "browser":
        _warn_old_node(say)
    return installed


def _warn_old_node(say: Callable[[str], None]) -> None:
    """puppeteer-core (tests/e2e/firefox) wants node 20 or newer; Debian bookworm's nodejs is 18."""
    node = shutil.which("node")
    if node is None:
        return
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    major = version.lstrip("v").split(".")[0]
    if major.isdigit() and int(major) < 20:
        say(f"browser: warning: node {version} is older than the 20 that the Firefox test's puppeteer-core needs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the Debian packages of the tools a make target lacks.")
    parser.add_argument("groups", nargs="+", choices=sorted(GROUPS))
    parser.add_argument("--plan", action="store_true", help="print the packages this round would install; no install")
    args = parser.parse_args(argv)
    try:
        for group in args.groups:
            if args.plan:
                found = probe(GROUPS[group])
                present = {name: where is not None for name, where in found.items()}
                print(" ".join(packages_to_install(GROUPS[group], present, nodesource=node_is_nodesource())))
            else:
                ensure(group, say=lambda line: print(line, flush=True))
    except (PrereqError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
