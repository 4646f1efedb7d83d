"""Mutation testing of the core modules with mutmut; prints (and optionally writes) a table.

    python tools/mutation.py [--modules fold cost solve certify sparse load | verdict lifetimes flow graph evaluate summary cli edges query figures] [--max-children N] [--keep DIR] [--mutants GLOB ...]

mutmut 3 mutates functions in a copy of the project (mutants/) and runs, per mutant, the
tests that cover the mutated function. This script makes that copy from the last commit (git
archive HEAD) in a temporary directory (the working tree is never touched or read), configures mutmut for the chosen
modules, and runs it with a Python that sees the venv's packages but not the editable install
of saematch, so the tests import the mutated copy (PYTHONPATH=src). Workflow tests (marker
`workflow`) are left out: they run Snakemake in subprocesses, which mutmut cannot follow; so
is the one `slow` test (minutes per run; its property, a width above lapjv's limit taking the
sparse path, is also covered by faster sparse tests).

Per module: mutants, killed (a test failed), survived, timed out, not covered by any test.
Slow: the unit tests run once in full, then once per mutant for the tests covering it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ("fold", "cost", "solve", "certify", "sparse", "load")
ANALYSIS = ("verdict", "lifetimes", "flow", "graph", "evaluate", "summary", "cli", "edges", "query", "figures")


def mutmut_config(modules: list[str]) -> str:
    others = sorted(p.name for p in (ROOT / "src/saematch").glob("*.py") if p.stem not in modules)
    return "\n".join([
        "", "[tool.mutmut]",
        'source_paths = ["src/saematch/"]',  # mutmut ≥ 3.8 (paths_to_mutate warns, and the warning reaches the CLI tests' stderr)
        "do_not_mutate = [" + ", ".join(f'"src/saematch/{f}"' for f in others) + "]",
        # tests_dir is deprecated in mutmut 3.8: its warning reached the CLI tests' stderr and failed the stats run
        'pytest_add_cli_args_test_selection = ["tests/"]',
        'also_copy = ["workflow/", "config/", "Snakefile", "scripts/", "envs/", "profiles/", "docs/", "tools/"]',
        'pytest_add_cli_args = ["-m", "not workflow and not slow", "-x", "-q", "-p", "no:cacheprovider"]',
        # a plain fork of the process that ran the tests hangs in polars (its thread pool is not
        # forked): every polars mutant would time out and count as killed
        'process_isolation = "forkserver"',
        # mutmut's CPU limit per mutant is (the covering tests' own time + this) × 30 s; a test
        # module's fixture (the tiny model: ~10 s to build, ~3 s to read back) is not in the
        # tests' own time, so with the default of 1 every evaluation mutant timed out
        "timeout_constant = 10", "",
    ])


def plain_python(tmp: Path) -> str:
    """A venv whose site-packages is this one's, minus the editable saematch (a .pth path line
    is added to sys.path without running that directory's own .pth hooks)."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(venv / "bin/python")


def outcome(code) -> str:
    """mutmut's exit codes: 1 (tests failed) kills; 0 survives; 33 no covering test; timeouts."""
    if code is None:
        return "not run"
    return {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 34: "skipped", 35: "suspicious",
            36: "timeout", 24: "timeout", 152: "timeout", -24: "timeout"}.get(code, "killed" if code else "survived")


def summarise(project: Path, modules: list[str]) -> tuple[list[dict], dict[str, list[str]]]:
    rows, survivors = [], {}
    for m in modules:
        meta = project / "mutants/src/saematch" / f"{m}.py.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        counts = {}
        for key, code in codes.items():
            o = outcome(code)
            counts[o] = counts.get(o, 0) + 1
            if o in ("survived", "no tests"):
                survivors.setdefault(m, []).append(key)
        n = len(codes)
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        tested = n - counts.get("not run", 0)  # an interrupted run leaves some not run
        rows.append({"module": m, "mutants": n, "killed": killed, "survived": counts.get("survived", 0),
                     "no tests": counts.get("no tests", 0), "not run": counts.get("not run", 0),
                     "score": f"{100 * killed / tested:.1f}%" if tested else "n/a"})
    return rows, survivors


def table(rows: list[dict]) -> str:
    cols = ["module", "mutants", "killed", "survived", "no tests", "not run", "score"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", nargs="+", default=list(CORE), choices=CORE + ANALYSIS)
    ap.add_argument("--keep", help="run in this directory (kept; mutmut resumes there) instead of a temporary one")
    ap.add_argument("--max-children", type=int, default=os.cpu_count())
    ap.add_argument("--mutants", nargs="+", default=[],
                    help="run only (or re-run) these mutants, fnmatch patterns such as 'saematch.flow.*' (with --keep: "
                         "the test-coverage stats of the first run are reused)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(args.keep) if args.keep else Path(tmp) / "project"
        if not (project / "pyproject.toml").exists():
            project.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "archive", "--format=tar", "-o", str(project / "src.tar"), "HEAD"], cwd=ROOT,
                           check=True)  # the last commit: uncommitted work never leaks into a run
            subprocess.run(["tar", "xf", "src.tar"], cwd=project, check=True)
            with open(project / "pyproject.toml", "a") as fh:
                fh.write(mutmut_config(args.modules))
        python = plain_python(Path(tmp))
        # the tiny model is built once per run, not once per mutant (tests/tiny_model.py)
        env = dict(os.environ, PYTHONPATH="src", OMP_NUM_THREADS="1", SAEMATCH_TINY_CACHE=str(project / "tiny-cache"))
        subprocess.run([python, "-m", "mutmut", "run", "--max-children", str(args.max_children), *args.mutants],
                       cwd=project, env=env)
        rows, survivors = summarise(project, args.modules)
    print(table(rows))
    for m, keys in survivors.items():
        print(f"\nsurvivors in {m}: " + ", ".join(k.split("__mutmut_")[0].split(".")[-1] + "#" + k.split("__mutmut_")[1]
                                               for k in keys))


if __name__ == "__main__":
    main()
