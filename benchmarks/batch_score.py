"""Benchmark: a predict job (engine local) against the model called directly, its memory as the
input grows, and engine spark beside it.

On this machine's CPU:

- ``local_over_direct`` (target >= 0.85): messages/s of ``steps.predict`` with engine local (read
  a csv, score, write parquet; batches of 64; model loading not counted, as the direct path's is
  not) over messages/s of the anchor, the model called directly as ``predict_speed.py`` calls it
  (``AutoModelForSequenceClassification`` and its tokenizer, batches of 64 in the file's order,
  each padded to its longest text, under ``torch.inference_mode``). Both score the same real
  messages of the bundled corpus with the same weights: the bundled base model with a new
  two-class head, registered as champion the way ``log_model`` logs a model. Paired repeats,
  alternating; the median of the paired ratios, with the lowest and highest beside it.
- ``peak_rss_mb[10x]``, ``peak_rss_mb[100x]``: the peak resident memory of a predict process
  (``python -m steps.predict``, its own ``ru_maxrss``) scoring 10 and 100 times the bundled
  corpus's 5,574 rows; ``rss_large_over_flat_limit`` (target <= 1.0) is the larger over
  ``1.2 x smaller + 100 MB``. These use a two-layer, 32-wide BERT with the bundled tokenizer, so
  that 557,400 rows take minutes: the model's memory does not depend on the input's size; what
  this measures is whether reading, scoring in chunks and writing grow with it.
- ``spark_msg_per_s`` (no target): engine spark on ``local[2]`` with the same messages and model
  as the first figure, start-up of the Spark session included; its labels must be engine
  local's. Skipped, with a line that says so, where pyspark or Java is missing.

    python benchmarks/batch_score.py                            # 2,000 messages, 3 repeats, 10x and 100x
    python benchmarks/batch_score.py --rows 64 --repeat 1 --scales 0.02,0.2   # what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import predict_speed

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
TARGET_SPEED = 0.85
BATCH = predict_speed.BATCH
CORPUS_ROWS = 5574
RSS_PROBE = (
    "import resource, sys\n"
    "from steps import predict\n"
    "status = predict.main(sys.argv[1:])\n"
    "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(status)\n"
)


def emit(figure: str, value: float, target: float | None, better: str, unit: str) -> None:
    line = {"benchmark": "batch_score", "figure": figure, "value": round(value, 4), "target": target,
            "better": better, "unit": unit}  # fmt: skip
    print(json.dumps(line), flush=True)


def write_csv(texts: list[str], path: Path) -> Path:
    import pandas as pd

    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(path, index=False)
    return path


def tiny_registered(name: str, folder: Path, texts: list[str]) -> None:
    """A two-layer, 32-wide BERT with the bundled tokenizer, registered as ``name``'s champion."""
    sys.path.insert(0, str(PROJECT_DIR / "tests"))
    from recorded import register_tiny_classifier

    register_tiny_classifier(name, folder, texts)


def peak_rss_mb(data: Path, out: Path, name: str, env: dict[str, str]) -> float:
    argv = ["--data", str(data), "--output", str(out), "--registered_model", name, "--batch_size", str(BATCH)]
    done = subprocess.run([sys.executable, "-c", RSS_PROBE, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"predict failed on {data.name}:\n{done.stderr[-3000:]}")
    kb = next(int(t.split()[1]) for t in done.stdout.splitlines() if t.startswith("peak_rss_kb"))
    return kb / 1024


def spark_usable() -> str | None:
    """None where engine spark can run here, else why not."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install -e '.[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java (Spark needs Java 17)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="messages for the speed figures")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scales", default="10,100", help="two input sizes, in corpus sizes")
    args = parser.parse_args(argv)
    small_scale, large_scale = (float(s) for s in args.scales.split(","))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hf_finetune.profiles import load_config
    from steps import predict

    max_length = load_config("local").max_length
    texts = predict_speed.messages(args.rows)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp_dir:
        import mlflow
        import pandas as pd
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tmp = Path(tmp_dir)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        os.chdir(tmp)
        folder = predict_speed.model_folder(tmp / "model")
        predict_speed.register(folder, max_length, texts)  # as bench-predict's champion
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        data = write_csv(texts, tmp / "messages.csv")
        job = ["--data", str(data), "--registered_model", predict_speed.NAME, "--batch_size", str(BATCH)]

        def local() -> float:
            out = tmp / "local.parquet"
            assert predict.main([*job, "--output", str(out), "--overwrite", "true"]) == 0
            client = mlflow.MlflowClient()
            run = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                "tags.`pipeline.step` = 'predict'",
                order_by=["start_time DESC"],
                max_results=1,
            )[0]
            return float(run.data.metrics["rows_per_second"])

        def direct() -> float:
            start = time.perf_counter()
            predict_speed.direct_predict(model, tokenizer, texts, max_length)
            return len(texts) / (time.perf_counter() - start)

        predict_speed.direct_predict(model, tokenizer, texts[:BATCH], max_length)  # warm-up
        rates: dict[str, list[float]] = {"local": [], "direct": []}
        for _ in range(args.repeat):
            rates["local"].append(local())
            rates["direct"].append(direct())
        local_labels = pd.read_parquet(tmp / "local.parquet")["label"].tolist()
        direct_labels = predict_speed.direct_predict(model, tokenizer, texts, max_length)
        agree = sum(a == b for a, b in zip(local_labels, direct_labels, strict=True)) / len(texts)
        print(f"{len(texts)} messages, batches of {BATCH}; labels agree on {agree:.1%}")
        if agree < 0.99:
            raise SystemExit("the two paths disagree: the comparison is not of the same model")
        paired = [a / b for a, b in zip(rates["local"], rates["direct"], strict=True)]
        for name, values in rates.items():
            print(f"{name:<8} msg/s: {'  '.join(f'{v:.1f}' for v in values)}")
        emit("local_over_direct", statistics.median(paired), TARGET_SPEED, "higher", "ratio")
        emit("local_over_direct_min", min(paired), None, "higher", "ratio")
        emit("local_over_direct_max", max(paired), None, "higher", "ratio")
        emit("local_msg_per_s", statistics.median(rates["local"]), None, "higher", "msg/s")

        why_not = spark_usable()
        if why_not:
            print(f"engine spark not measured: {why_not}")
        else:
            start = time.perf_counter()
            spark_job = [
                *job,
                "--output",
                str(tmp / "spark"),
                "--engine",
                "spark",
                "--spark_master",
                "local[2]",
            ]
            done = subprocess.run(
                [sys.executable, "-m", "steps.predict", *spark_job],
                capture_output=True,
                text=True,
                cwd=PROJECT_DIR,
            )
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"engine spark failed:\n{done.stderr[-3000:]}")
            spark = pd.read_parquet(tmp / "spark").astype({"id": int}).sort_values("id")
            if spark["label"].tolist() != local_labels:
                raise SystemExit("engine spark and engine local disagree on the labels")
            print(f"engine spark, local[2]: {len(texts)} messages in {seconds:.1f} s, session start included")
            emit("spark_msg_per_s", len(texts) / seconds, None, "higher", "msg/s")

        # memory: 10x and 100x the corpus, a tiny model, each size in a process of its own
        tiny_registered("bench-tiny", tmp / "tiny", texts)
        corpus = predict_speed.messages(CORPUS_ROWS)
        peaks = {}
        for scale in (small_scale, large_scale):
            rows = int(CORPUS_ROWS * scale)
            repeated = (corpus * (rows // len(corpus) + 1))[:rows]
            big = write_csv(repeated, tmp / f"x{scale:g}.csv")
            del repeated
            start = time.perf_counter()
            peaks[scale] = peak_rss_mb(big, tmp / f"x{scale:g}.parquet", "bench-tiny", dict(os.environ))
            seconds = time.perf_counter() - start
            print(f"{rows} rows ({scale:g}x): peak RSS {peaks[scale]:.0f} MB, {seconds:.0f} s")
            big.unlink()
        limit = 1.2 * peaks[small_scale] + 100
        emit(f"peak_rss_mb[{small_scale:g}x]", peaks[small_scale], None, "lower", "MB")
        emit(f"peak_rss_mb[{large_scale:g}x]", peaks[large_scale], None, "lower", "MB")
        emit("rss_large_over_flat_limit", peaks[large_scale] / limit, 1.0, "lower", "ratio")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
