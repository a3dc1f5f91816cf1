"""Run every benchmark, one after the other, and print each figure against its target.

    python benchmarks/run_all.py              # the full sizes (see each script's docstring)
    python benchmarks/run_all.py --quick      # tiny sizes: checks the scripts run, not the targets
    python benchmarks/run_all.py --render     # measure nothing: rewrite the docs' table from the JSON
    python benchmarks/run_all.py --only batch_score.py   # one script; its figures replace its old ones

Each script prints a table and then one JSON line per figure; this collects the JSON lines, prints
them again together with met / missed, and exits 1 if a target was missed. A full run writes every
figure, with the commit and the machine, to ``benchmarks/results.json`` and rewrites the table of
``docs/PERFORMANCE.md`` from it: a new measurement is a data change, not prose.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
DOC = HERE.parent / "docs" / "PERFORMANCE.md"
TABLE_START = "<!-- figures: generated from benchmarks/results.json by benchmarks/run_all.py -->"
TABLE_END = "<!-- end of figures -->"
BENCHMARKS = {  # script: (arguments for the full run, arguments for --quick)
    "log_modes.py": ([], ["--sizes", "tiny", "--repeat", "1", "--compare-mlflow"]),
    "cached_main.py": ([], ["--profile", "smoke"]),
    "finetune_speed.py": ([], ["--train-rows", "64", "--epochs", "1", "--test-rows", "200", "--ab"]),
    "predict_speed.py": ([], ["--rows", "128", "--repeat", "1"]),
    "quality.py": ([], ["--profile", "smoke", "--seeds", "42"]),
    "batch_score.py": ([], ["--rows", "64", "--repeat", "1", "--scales", "0.02,0.2"]),
    "log_modes_generation.py": (["--repeat", "3"], ["--sizes", "tiny", "--repeat", "1"]),
    "generation_quality.py": ([], ["--profile", "smoke", "--seeds", "42"]),
    "generation_speed.py": ([], ["--train-rows", "64", "--prompts", "8", "--repeat", "1"]),
    "sweep_overhead.py": (
        [
            "--trials",
            "8",
            "--compare-default",
            "--smoke-trials",
            "3",
            "--workers-profile",
            "smoke",
            "--workers-space",
            "sweeps/smoke.yaml",
        ],
        [
            "--profile",
            "smoke",
            "--space",
            "sweeps/smoke.yaml",
            "--trials",
            "2",
            "--workers",
            "0",
            "--compare-default",
        ],
    ),
}
QUICK_AT_ONCE = 2  # --quick: scripts running at once
NOT_MEASURED: tuple[str, ...] = ()  # figures the issue asks for that no script measures yet


def met(line: dict[str, Any]) -> bool | None:
    if line.get("target") is None:
        return None
    if line["better"] == "lower":
        return bool(line["value"] <= line["target"])
    return bool(line["value"] >= line["target"])


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: version(name) for name in ("torch", "mlflow", "transformers")},
    }


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return f"{head}+changes" if git("status", "--porcelain", "--untracked-files=no") else head


def render(results: dict[str, Any]) -> str:
    """The figures as the Markdown table that docs/PERFORMANCE.md shows (markers included)."""
    m = results["machine"]
    rows = [
        TABLE_START,
        "",
        f"`python benchmarks/run_all.py` at commit `{results['commit']}`, {results['wall_s'] / 60:.0f} "
        f"minutes; {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, mlflow {m['mlflow']}, "
        f"transformers {m['transformers']}.",
        *(
            f"`{name}`'s figures come from `run_all.py --only {name}.py` at commit `{run['commit']}`, "
            f"{run['wall_s'] / 60:.0f} minutes" + (f"; {run['note']}" if run.get("note") else "") + "."
            for name, run in results.get("separately", {}).items()
        ),
        "",
        "| benchmark | figure | value | unit | target | |",
        "|---|---|---:|---|---:|---|",
    ]
    for line in results["figures"]:
        verdict = {True: "met", False: "**missed**", None: ""}[met(line)]
        sign = "≤ " if line["better"] == "lower" else "≥ "
        target = "" if line["target"] is None else f"{sign}{line['target']}"
        cells = (line["benchmark"], f"`{line['figure']}`", line["value"], line["unit"], target, verdict)
        rows.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join([*rows, "", TABLE_END])


def write_doc(results: dict[str, Any]) -> None:
    text = DOC.read_text(encoding="utf-8")
    before, _, rest = text.partition(TABLE_START)
    _, found, after = rest.partition(TABLE_END)
    if not found:
        raise SystemExit(f"{DOC} has no table markers: add {TABLE_START!r} and {TABLE_END!r}")
    DOC.write_text(before + render(results) + after, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the scripts run")
    parser.add_argument("--render", action="store_true", help="rewrite the docs' table from the JSON")
    parser.add_argument(
        "--only",
        choices=sorted(BENCHMARKS),
        help="run this script alone and put its figures in place of its old ones (marked as measured "
        "at another commit than the rest)",
    )
    parser.add_argument("--note", default="", help="with --only: what a reader should know about the run")
    args = parser.parse_args(argv)
    if args.render:
        write_doc(json.loads(RESULTS.read_text(encoding="utf-8")))
        return 0
    lines: list[dict[str, Any]] = []
    start = time.perf_counter()
    # The full run goes one script at a time, so no measurement shares the CPU with another.
    # --quick checks only that the scripts run (each in its own temp dirs and store), two at a
    # time: all six at once thrash a 2-core machine and end later than two by two.
    commands = {
        script: [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        for script, (full, quick) in BENCHMARKS.items()
        if args.only in (None, script)
    }
    with ThreadPoolExecutor(max_workers=QUICK_AT_ONCE if args.quick else 1) as pool:
        runs = {
            script: pool.submit(subprocess.run, command, capture_output=True, text=True)
            for script, command in commands.items()
        }
        for script in commands:
            print(f"=== {script}", flush=True)
            done = runs[script].result()
            print(done.stdout, end="")
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                for later in runs.values():
                    later.cancel()  # those not started; the pool waits for the running ones
                return done.returncode
            lines += [json.loads(t) for t in done.stdout.splitlines() if t.startswith('{"benchmark"')]
    wall = time.perf_counter() - start
    print(f"\n=== all figures ({wall:.0f} s)")
    missed = 0
    for line in lines:
        verdict = met(line)
        missed += verdict is False
        label = {True: "met", False: "MISSED", None: "(no target)"}[verdict]
        print(f"{line['benchmark'] + ' ' + line['figure']:<52}{line['value']:>10}  {label}")
    for figure in NOT_MEASURED:
        print(f"not measured yet: {figure}")
    print()
    for line in lines:
        print(json.dumps(line))
    if args.only and not args.quick:
        results = json.loads(RESULTS.read_text(encoding="utf-8"))
        name = args.only.removesuffix(".py")
        kept = [line for line in results["figures"] if line["benchmark"] != name]
        results["figures"] = kept + lines
        results.setdefault("separately", {})[name] = {
            "commit": commit(),
            "wall_s": round(wall),
            "note": args.note,
        }
        RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        write_doc(results)
        print(f"put {name}'s figures in {RESULTS.relative_to(HERE.parent)} and the table")
    elif not args.quick:
        results = {"commit": commit(), "wall_s": round(wall), "machine": machine(), "figures": lines}
        RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        write_doc(results)
        print(f"wrote {RESULTS.relative_to(HERE.parent)} and the table of {DOC.relative_to(HERE.parent)}")
    return 1 if missed and not args.quick else 0


if __name__ == "__main__":
    raise SystemExit(main())
