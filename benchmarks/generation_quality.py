"""Benchmark: the causal LM a user gets from `main -P task=text-generation`, over three seeds.

Each seed is one `main` of the profile (default ``local``) with ``--task text-generation`` and
``--seed``, a fresh child process on a fresh tracking store: the bundled SMS corpus as
instructions (the default ``prompt_template``, `` spam`` / `` ham`` completions), the offline
stand-in base model (the bundled MiniLM as a causal LM), this machine's CPU. The seed sets the
split, the new LM head's initialisation and the data order. On each split ``evaluate`` scores, on
the same test rows: the generated label's spam F1 and the classical model's (TF-IDF + linear SVM
on the same train split), and the completion's bits per byte for the fine-tuned model, the base
model and the label prior.

    python benchmarks/generation_quality.py                            # local, seeds 42 1 2
    python benchmarks/generation_quality.py --profile smoke --seeds 42  # a minute; the suite's size

Figures: ``generated_f1_median`` (target >= 0.95), ``bpb_over_base_max`` and
``bpb_over_prior_max`` (the fine-tune's test bits per byte over the base model's and the label
prior's, the worst seed: target < 1, below both on every seed), ``main_wall_s_max`` (target <= 900
s, every seed), and without target the ranges, the classical model's F1 and the fine-tune's
F1 minus the classical model's in points (the goal beyond: >= 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # beside this file: one `main` in a fresh store

TARGETS = {  # figure: (target, better)
    "generated_f1_median": (0.95, "higher"),
    "bpb_over_base_max": (1.0, "lower"),
    "bpb_over_prior_max": (1.0, "lower"),
    "main_wall_s_max": (900.0, "lower"),
}


def one_main(profile: str, seed: int) -> dict[str, Any]:
    return quality.one_main(profile, seed, "--task", "text-generation")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="local")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    args = parser.parse_args(argv)
    runs = [one_main(args.profile, seed) for seed in args.seeds]
    print(f"{'seed':>6}{'rows':>6}{'gen F1':>9}{'classical':>11}{'bpb':>9}{'base bpb':>10}{'prior bpb':>11}"
          f"{'exact':>8}{'main s':>8}")  # fmt: skip
    for r in runs:
        print(
            f"{r['seed']:>6}{r['test_rows']:>6.0f}{r['test_f1']:>9.4f}{r['classical_f1']:>11.4f}"
            f"{r['test_bits_per_byte']:>9.4f}{r['base_bits_per_byte']:>10.4f}{r['prior_bits_per_byte']:>11.4f}"
            f"{r['test_exact_match']:>8.4f}{r['wall_s']:>8.0f}"
        )
    generated = [r["test_f1"] for r in runs]
    classical = [r["classical_f1"] for r in runs]
    gaps = [100 * (r["test_f1"] - r["classical_f1"]) for r in runs]
    print(
        f"generated-label F1 median [range] {quality.spread(generated)}; "
        f"classical {quality.spread(classical)}"
    )
    figures = {
        "generated_f1_median": statistics.median(generated),
        "generated_f1_min": min(generated),
        "generated_f1_max": max(generated),
        "classical_f1_median": statistics.median(classical),
        "generated_minus_classical_points_median": statistics.median(gaps),
        "generated_minus_classical_points_min": min(gaps),
        "test_bits_per_byte_median": statistics.median(r["test_bits_per_byte"] for r in runs),
        "bpb_over_base_max": max(r["test_bits_per_byte"] / r["base_bits_per_byte"] for r in runs),
        "bpb_over_prior_max": max(r["test_bits_per_byte"] / r["prior_bits_per_byte"] for r in runs),
        "exact_match_median": statistics.median(r["test_exact_match"] for r in runs),
        "main_wall_s_max": max(r["wall_s"] for r in runs),
        "main_wall_s_median": statistics.median(r["wall_s"] for r in runs),
    }
    print()
    for figure, value in figures.items():
        lower = figure.startswith(("main_wall", "bpb", "test_bits"))
        target, better = TARGETS.get(figure, (None, "lower" if lower else "higher"))
        unit = ("points" if "points" in figure else "s" if "wall" in figure else "ratio" if "over" in figure
                else "bits/byte" if "bits" in figure else "f1")  # fmt: skip
        line = {"benchmark": "generation_quality", "figure": f"{figure}[{args.profile}]",
                "value": round(value, 4), "target": target, "better": better, "unit": unit}  # fmt: skip
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
