"""Benchmark: ``log_modes.py`` for causal LMs: ``log_modes.py --task text-generation``.

GPT-2 models of the same widths and depths as log_modes' BERT classifiers, logged as the
text-generation task logs them (``llm/v1/completions``): checkpoint log against ``cp -r``, peak RSS
at a small and a large size (flat), the reference's artifact size, persist against copying the
weights. Its figures are ``log_modes_generation``'s, apart from the classifier's. See
``log_modes.py`` for what each operation is and how it is timed.

    python benchmarks/log_modes_generation.py --repeat 3         # small + large
    python benchmarks/log_modes_generation.py --sizes tiny --repeat 1
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import log_modes  # beside this file

if __name__ == "__main__":
    raise SystemExit(log_modes.main(["--task", "text-generation", *sys.argv[1:]]))
