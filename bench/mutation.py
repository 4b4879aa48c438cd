"""Mutation testing of the rules that protect users (issue 29): ``make mutation``, not part of ``make test``.

mutmut 3.8.1 plants one small change (a mutant) at a time in the functions of ``SCOPES`` and runs, for each,
only the tests of the scope's selection that call the mutated function (mutmut records which test calls what
in a first run). A mutant some test fails on is killed; one every test passes is a survivor: a rule the
tests would not see broken. Each scope runs on its own, in ``.build/mutation/<scope>/`` (mutmut's copy of
the sources is ``mutants/`` under it; nothing is written into the working tree), one worker, so it shares a
2-core machine; the scores go to ``.build/mutation/results.json`` and are printed. docs/mutation.md says
what the scopes are and why the survivors left are equivalent.

    python -m bench.mutation [SCOPE ...] [--list]

Adding a module is one ``Scope`` line: its files, the mutant names in scope (globs over mutmut's names,
``<module>.x_<function>__mutmut_<n>`` and ``<module>.xǁ<Class>ǁ<method>__mutmut_<n>``) and its tests.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = REPO_ROOT / ".build" / "mutation"
MUTMUT_VERSION = "3.8.1"
# What each scope's copy holds besides tests/ (mutmut copies these into mutants/; the client comes from its editable
# install; docker/ has the canary embedded.supervisor loads).
SOURCES = ("frontend", "embedded", "model_repository", "docker")
TESTS = "tests"  # copied without node_modules (the browser tests' npm packages)
# Imported as top-level modules (tests/conftest.py puts the folder on sys.path, as Triton's stub does), so
# their mutants are named after the module, not the path.
SYS_PATH_FOLDERS = ("model_repository/sd_img2img/1/",)
# Every mutant's pytest: the in-process layers only, nothing cached into the copy, 30 s at most per test (a
# mutant that hangs a run is a timeout, which counts as detected). mutmut runs pytest several
# times in one process, so an object of one run (an unclosed session) may be collected in the next: that
# run's "unraisable exception" is no verdict on the mutant.
PYTEST_ARGS = [
    "-m", "not integration", "-p", "no:cacheprovider", "-p", "no:unraisableexception", "-p", "no:threadexception",
    "--timeout=30",
]  # fmt: skip
DETECTED = {"killed", "timeout", "segfault"}
TESTS_OVERRIDE = "MUTATION_TESTS"  # the parent's --tests, to the worker


@dataclass(frozen=True)
class Scope:
    files: tuple[str, ...]  # the files mutmut rewrites
    mutants: tuple[str, ...]  # the mutant names that count (globs); other functions of those files are not run
    tests: tuple[str, ...]  # the test selection (paths or node ids) mutants are run against
    pytest_args: tuple[str, ...] = ()  # more pytest arguments for this scope (a -k)
    sql: bool = False  # SQL text mutated as SQL, not by case (bench/mutation_sql.py)


SERVICE = "frontend.runs.service.xǁRunServiceǁ"
# The SQLite store's leases and fencing: a run's first lease (create_run, safe to repeat), the fenced writes and
# the outbox row they commit with, stop (outranks a lease), claims (runs, deliveries, Idempotency-Keys), renewal
# of named live work, releases, and the key checks of its reads. Methods, then module functions.
STORE_RULES = (
    "create_run", "mark_processing", "finish_run", "record_attempt", "stop_run", "claim_*", "answer_idempotency",
    "release_idempotency", "renew_leases", "release_run", "release_leases*", "finished_among", "get_run",
    "run_state", "list_runs",
)  # fmt: skip
STORE_FUNCTIONS = ("_fenced", "_insert_delivery", "_get_run")
WHO_MAY_ACT = "tests/api/test_who_may_act.py"
GUARDS = "tests/unit/test_guard_rules.py"
SCOPES: dict[str, Scope] = {
    # Authentication: key hashing and matching, the header, the middleware's rule (public paths, else 401).
    "auth": Scope(
        ("frontend/auth.py", "frontend/http/middlewares.py"),
        ("frontend.auth.x_*", "frontend.http.middlewares.x_authenticate__mutmut_*"),
        ("tests/unit/test_auth.py", WHO_MAY_ACT),
    ),
    # Who may act on a run: view (status, result), cancel, events, a synchronous caller's recorded outcome.
    "run-access": Scope(
        ("frontend/runs/service.py",),
        tuple(
            f"{SERVICE}{method}__mutmut_*"
            for method in ("view", "cancel", "events", "answer", "_recorded_answer", "_finished_answer")
        )
        + ("frontend.runs.service.x_answer_of__mutmut_*",),
        (WHO_MAY_ACT, "tests/api/test_store_faults.py"),
    ),
    "idempotency": Scope(
        ("frontend/runs/idempotency.py",),
        ("frontend.runs.idempotency.*",),
        ("tests/unit/test_idempotency_protocol.py", WHO_MAY_ACT, "tests/api/test_idempotency_follow_up.py"),
    ),
    "netguard": Scope(
        ("frontend/netguard.py",), ("frontend.netguard.*",), (GUARDS, "tests/unit/test_frontend_units.py")
    ),
    "fetch": Scope(("frontend/fetch.py",), ("frontend.fetch.*",), (GUARDS,)),
    # The image caps: base64 length, pixels, sides (and the decoding they guard: formats, bombs).
    "image-caps": Scope(
        ("frontend/images.py",),
        tuple(
            f"frontend.images.x_{function}__mutmut_*"
            for function in ("decode_base64", "load_base64_image", "fit_size", "load_image")
        ),
        (GUARDS, "tests/unit/test_frontend_units.py"),
    ),
    "webhook-signing": Scope(
        ("frontend/webhooks.py",),
        ("frontend.webhooks.xǁWebhookSignerǁ*",),
        ("tests/unit/test_webhook_signing.py", "tests/unit/test_frontend_units.py"),
    ),
    # Seeds, strength and steps: the model's checks, the API schema's bounds, the frontend's hand-over.
    "seeds": Scope(
        ("model_repository/sd_img2img/1/img2img_requests.py", "frontend/schemas.py", "frontend/runs/execute.py"),
        tuple(f"img2img_requests.x_{function}__mutmut_*" for function in ("check_inputs", "effective_steps"))
        + ("frontend.schemas.x_check_bounds__mutmut_*", "frontend.runs.execute.x_generation_input__mutmut_*"),
        ("tests/unit/test_seeds.py", "tests/unit/test_img2img_requests.py"),
    ),
    # The step scheduler: every method of StepPlanner and StepEngine (admission at the row cap, size groups and
    # their model time, cancel and queue timeout of waiting and active jobs, each job settled once, failure per
    # job, stop and a dead engine); not OwnerThread, the Triton-thread helper.
    "engine": Scope(
        ("model_repository/sd_img2img/1/engine.py",),
        ("engine.xǁStepEngineǁ*", "engine.xǁStepPlannerǁ*"),
        ("tests/unit/test_engine.py",),
    ),
    "store-fencing": Scope(
        ("frontend/store/sqlite.py",),
        tuple(f"frontend.store.sqlite.xǁSqliteRunStoreǁ{method}__mutmut_*" for method in STORE_RULES)
        + tuple(f"frontend.store.sqlite.x_{function}__mutmut_*" for function in STORE_FUNCTIONS),
        ("tests/store/test_contract.py",),
        ("-k", "sqlite"),
        sql=True,
    ),
}


# Survivors judged equivalent: no input tells them from the original (docs/mutation.md says why). Each is named
# with a fragment of its mutated line: mutmut numbers a function's mutants in order, so when the function changes
# a name may come to mean another mutant, and then the fragment no longer matches and it counts as a survivor.
CASE_INSENSITIVE = "HTTP header names are case-insensitive (aiohttp's CIMultiDict, both ways)"
NO_SUCH_CODE = "the default of a missing error code: no code in the error table is '', None or 'XXXX'"
CHUNK = "the read size: the cap is checked after every chunk, whatever its size"
ANCHORED = "count of a ^-anchored pattern: it matches once at most"
UINT8 = "an RGB image's array is uint8 already"
SQL_NAMES = "SQLite's table and column names, and sqlite3.Row's keys, are case-insensitive"
CLOCK_TIE = "a lease that ends at the very instant of the claim's clock reading: two readings never tie"
EQUIVALENT: dict[str, tuple[str, str]] = {
    "frontend.auth.x_key_hash__mutmut_7": ('"UTF-8"', '"UTF-8" and "utf-8" name the same codec'),
    "frontend.http.middlewares.x_authenticate__mutmut_6": ('"authorization"', CASE_INSENSITIVE),
    "frontend.http.middlewares.x_authenticate__mutmut_7": ('"AUTHORIZATION"', CASE_INSENSITIVE),
    "frontend.http.middlewares.x_authenticate__mutmut_24": ('"www-authenticate"', CASE_INSENSITIVE),
    "frontend.http.middlewares.x_authenticate__mutmut_25": ('"WWW-AUTHENTICATE"', CASE_INSENSITIVE),
    "frontend.fetch.x_fetch_file_url__mutmut_41": ("iter_chunked(65 * 1024)", CHUNK),
    "frontend.fetch.x_fetch_file_url__mutmut_42": ("iter_chunked(64 * 1025)", CHUNK),
    "frontend.images.x_decode_base64__mutmut_7": ("text.strip(), )", ANCHORED),
    "frontend.images.x_decode_base64__mutmut_9": ("count=2", ANCHORED),
    "frontend.images.x_decode_base64__mutmut_12": (
        "/ 3 + 4",
        "an integer length exceeds x exactly when it exceeds floor(x)",
    ),
    "frontend.images.x_load_image__mutmut_69": ("dtype=None", UINT8),
    "frontend.images.x_load_image__mutmut_71": ("np.asarray(rgb, )", UINT8),
    "frontend.runs.service.x_answer_of__mutmut_44": ('get("code", None)', NO_SUCH_CODE),
    "frontend.runs.service.x_answer_of__mutmut_46": ('get("code", )', NO_SUCH_CODE),
    "frontend.runs.service.x_answer_of__mutmut_55": ('get("code", "XXXX")', NO_SUCH_CODE),
    "frontend.runs.service.xǁRunServiceǁanswer__mutmut_1": (
        'error = ""',
        "the first value of error is read only for a cancelled task, and only by isinstance, false for '' as for None",
    ),
    # engine
    "engine.xǁStepEngineǁ__init____mutmut_17": ('float("INF")', 'float() reads "inf" in any case'),
    "engine.xǁStepEngineǁ_fail__mutmut_5": ("fallback=None", "fallback=None is as falsy as False, its only reading"),
    "engine.xǁStepEngineǁ_finish__mutmut_4": (
        "break",
        "a job of the list is found settled only when stop() claimed it, and stop() claims every job left after it",
    ),
    "engine.xǁStepPlannerǁremove__mutmut_11": (
        "pop(job.group, )",
        "an active group always has its served_s entry (activate sets it; only its leaving pops it)",
    ),
    # store-fencing
    "frontend.store.sqlite.x__get_run__mutmut_13": ('row["KEY_HASH"]', SQL_NAMES),
    "frontend.store.sqlite.xǁSqliteRunStoreǁrun_state__mutmut_13": ('row["KEY_HASH"]', SQL_NAMES),
    "frontend.store.sqlite.xǁSqliteRunStoreǁcreate_run__mutmut_10": ("WEBHOOK_ENDPOINT, LEASE_OWNER", SQL_NAMES),
    "frontend.store.sqlite.xǁSqliteRunStoreǁrelease_leases__mutmut_2": ('("RUNS", ', SQL_NAMES),
    "frontend.store.sqlite.xǁSqliteRunStoreǁrelease_leases__mutmut_4": ('"DELIVERIES")', SQL_NAMES),
    "frontend.store.sqlite.xǁSqliteRunStoreǁrelease_leases_of_others__mutmut_2": ('("RUNS", ', SQL_NAMES),
    "frontend.store.sqlite.xǁSqliteRunStoreǁrelease_leases_of_others__mutmut_4": ('"DELIVERIES")', SQL_NAMES),
    "frontend.store.sqlite.xǁSqliteRunStoreǁrenew_leases__mutmut_10": ('("RUNS", runs', SQL_NAMES),
    "frontend.store.sqlite.xǁSqliteRunStoreǁrenew_leases__mutmut_12": ('("DELIVERIES", deliveries', SQL_NAMES),
    "frontend.store.sqlite.xǁSqliteRunStoreǁclaim_unfinished_runs__mutmut_12": ("lease_expires_at <= ?", CLOCK_TIE),
    "frontend.store.sqlite.xǁSqliteRunStoreǁclaim_due_deliveries__mutmut_16": ("lease_expires_at <= ?", CLOCK_TIE),
    "frontend.store.sqlite.xǁSqliteRunStoreǁcreate_run__mutmut_20": (
        "rowcount == 2",
        "a fresh insert is then read back: the same key, owner and token 1, so the same Lease(owner, 1)",
    ),
    "frontend.store.sqlite.x__insert_delivery__mutmut_6": (
        '"INSERT INTO deliveries',
        "only the write that ends a run inserts its delivery, and a run ends once (finish is fenced and clears the"
        " lease, stop needs it unfinished): no second row for the id ever meets the first",
    ),
}


def equivalence(name: str, diff: str) -> str | None:
    """Why ``name`` is equivalent, if it is judged so and its diff is still the one judged."""
    judged = EQUIVALENT.get(name)
    if judged is None:
        return None
    fragment, reason = judged
    mutated = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return reason if any(fragment in line for line in mutated) else None


def in_scope(name: str, scope: Scope) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in scope.mutants)


# --- the worker: one scope, inside its own folder, through mutmut's own CLI -------------------------------


def _worker(scope_name: str) -> None:
    """Runs in ``.build/mutation/<scope>/`` (the parent lays it out): configure mutmut, then ``mutmut run``."""
    from mutmut import configuration

    scope = SCOPES[scope_name]
    values: dict[str, Any] = {
        "source_paths": list(SOURCES),
        "only_mutate": list(scope.files),
        "pytest_add_cli_args": [*PYTEST_ARGS, *scope.pytest_args],
        "pytest_add_cli_args_test_selection": json.loads(os.environ.get(TESTS_OVERRIDE, "null")) or list(scope.tests),
        "use_git_change_detection": False,
        "use_setproctitle": False,
        # A mutant's CPU limit is (its tests' time + 1 s) x 2 x this (mutmut's default 15): an engine mutant
        # that loops forever is a timeout after about 10 s, not 30.
        "timeout_multiplier": 5.0,
    }
    # Before mutmut's other modules: some read the configuration as they are imported.
    configuration._config_reader = lambda: lambda key, default: values.get(key, default)
    configuration.reset_config()

    from mutmut import __main__ as mutmut_main
    from mutmut.mutation import file_mutation
    from mutmut.utils import format_utils

    original: Callable[[Path, str], str] = format_utils.get_mutant_name

    def mutant_name(relative_source_path: Path, mutant_method_name: str) -> str:
        path = str(relative_source_path)
        for folder in SYS_PATH_FOLDERS:
            if path.startswith(folder):
                return original(Path(path.removeprefix(folder)), mutant_method_name)
        return original(relative_source_path, mutant_method_name)

    for module in (file_mutation, mutmut_main):  # both imported the function by name
        setattr(module, "get_mutant_name", mutant_name)  # noqa: B010 - mypy: not an exported attribute
    if scope.sql:
        from bench.mutation_sql import use_sql_operator

        use_sql_operator()
    sys.argv = ["mutmut", "run", "--max-children", "1", *scope.mutants]
    try:
        mutmut_main.cli()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise


# --- the parent: lay out each scope's folder, run its worker, read its verdicts ---------------------------


def prepare(scope_name: str, tree: Path) -> Path:
    """A fresh folder whose sources link to ``tree`` (mutmut copies them into its ``mutants/``)."""
    folder = WORK_DIR / scope_name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in (*SOURCES, "pyproject.toml"):
        (folder / name).symlink_to(tree / name)
    shutil.copytree(tree / TESTS, folder / TESTS, ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    return folder


def verdicts(folder: Path, scope: Scope) -> dict[str, str]:
    """mutant name -> mutmut's status, for the mutants in scope."""
    from mutmut.stats import status_by_exit_code

    found: dict[str, str] = {}
    for file in scope.files:
        meta = json.loads((folder / "mutants" / f"{file}.meta").read_text())
        for name, code in meta["exit_code_by_key"].items():
            if in_scope(name, scope):
                found[name] = status_by_exit_code[code]
    return found


def diff_of(folder: Path, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.mutation", "--show", name],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def _show(name: str) -> None:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    for scope in SCOPES.values():
        if in_scope(name, scope):
            for file in scope.files:
                meta = json.loads((Path("mutants") / f"{file}.meta").read_text())
                if name in meta["exit_code_by_key"]:
                    print(get_diff_for_mutant(name, path=file))
                    return


def run_scope(scope_name: str, tests: list[str] | None, tree: Path) -> dict[str, Any] | None:
    scope = SCOPES[scope_name]
    folder = prepare(scope_name, tree)
    started = time.monotonic()
    log = folder / "mutmut.log"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "bench.mutation", "--worker", scope_name],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", TESTS_OVERRIDE: json.dumps(tests)},
        )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        print(f"mutation: mutmut failed on scope {scope_name} (exit {done.returncode}); log: {log}", file=sys.stderr)
        return None
    found = verdicts(folder, scope)
    survivors = sorted(name for name, status in found.items() if status not in DETECTED)
    diffs = {name: diff_of(folder, name) for name in survivors}
    reasons = {name: equivalence(name, diffs[name]) for name in survivors}
    return {
        "scope": scope_name,
        "files": list(scope.files),
        "mutants": list(scope.mutants),
        "tests": tests or list(scope.tests),
        "tree": str(tree),
        "total": len(found),
        "killed": len(found) - len(survivors),
        "equivalent": sum(reason is not None for reason in reasons.values()),
        "seconds": round(elapsed, 1),
        "survivors": {
            name: {"status": found[name], "equivalent": reasons[name], "diff": diffs[name]} for name in survivors
        },
    }


MIN_KILLED = 0.9


def summary(result: dict[str, Any]) -> str:
    """killed/total (score), and the score once the survivors judged equivalent are left out."""
    killed, total, equivalent = result["killed"], result["total"], result.get("equivalent", 0)
    line = f"{killed}/{total} killed ({killed / total if total else 1:.0%})"
    if equivalent:
        line += f", {equivalent} equivalent: {killed}/{total - equivalent} ({killed / (total - equivalent):.0%})"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scopes", nargs="*", help=f"default: every scope ({', '.join(SCOPES)})")
    parser.add_argument(
        "--tests", nargs="+", help="run every scope against these tests instead of its own (a baseline: tests/unit ...)"
    )
    parser.add_argument(
        "--tree", type=Path, default=REPO_ROOT, help="the source tree to mutate (default: this working tree)"
    )
    parser.add_argument("--list", action="store_true", help="list the scopes and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--show", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    if args.show:
        _show(args.show)
        return
    if args.list:
        for name, scope in SCOPES.items():
            print(f"{name}: {', '.join(scope.files)}; tests: {', '.join(scope.tests)}")
        return
    installed = importlib.metadata.version("mutmut") if importlib.util.find_spec("mutmut") else None
    if installed != MUTMUT_VERSION:
        raise SystemExit(f"mutation: needs mutmut=={MUTMUT_VERSION} (found {installed}); make mutation installs it")
    names = args.scopes or list(SCOPES)
    unknown = [name for name in names if name not in SCOPES]
    if unknown:
        parser.error(f"unknown scopes {unknown}; known: {list(SCOPES)}")
    results_path = WORK_DIR / ("baseline.json" if args.tests else "results.json")
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    failed: list[str] = []
    for name in names:
        print(f"mutation: {name} ...", flush=True)
        result = run_scope(name, args.tests, args.tree.resolve())
        if result is None:
            failed.append(name)
            continue
        results[name] = result
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"mutation: {name}: {summary(result)} in {result['seconds']} s")
        for survivor, what in result["survivors"].items():
            verdict = f"equivalent ({what['equivalent']})" if what["equivalent"] else what["status"]
            print(f"  {verdict}: {survivor}\n" + "\n".join("    " + line for line in what["diff"].splitlines()))
    print(f"mutation: results in {results_path.relative_to(REPO_ROOT)}")
    for name in names:
        if name in failed:
            print(f"  {name:16} mutmut failed: {WORK_DIR / name / 'mutmut.log'}")
            continue
        print(f"  {name:16} {summary(results[name])}, {results[name]['seconds']:.1f} s")
    # The bar issue 29 set: at least 90% of each scope's mutants killed, survivors judged equivalent counted as lost.
    short = [
        name for name in names if name not in failed and results[name]["killed"] < MIN_KILLED * results[name]["total"]
    ]
    for name in short:
        print(f"mutation: {name} kills fewer than {MIN_KILLED:.0%} of its mutants", file=sys.stderr)
    if failed or short:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
