"""Benchmark: scoring messages with the registered model as users load it, against the model called directly.

Side by side in one process, on this machine's CPU, the same weights and the same messages
(1,000 real ones from the bundled corpus, in the corpus's order), batches of 64:

- ``pyfunc``: ``mlflow.pyfunc.load_model("models:/<name>@champion").predict(texts,
  params={"batch_size": 64})`` on a model logged exactly as the ``log_model`` step logs one
  (``save_mode`` full, the step's signature, ``model_config``, requirements) and registered;
- ``direct`` (the anchor): the same weights with ``AutoModelForSequenceClassification`` and the
  tokenizer, each batch padded to its own longest text, truncated at the step's ``max_length``,
  under ``torch.inference_mode``; labels by argmax;
- ``sorted`` (no target): ``direct`` with the messages sorted by length first (and the labels put
  back in order), as ``evaluate`` scores: batches of similar lengths pad less. MLflow's
  transformers pipeline keeps the caller's order, so this is what a caller gains by sorting.

Each path predicts every message ``--repeat`` times, alternating (after one warm-up batch each);
messages/s is the median. Figure: ``pyfunc_over_direct`` (target >= 0.9), the median of the
repeats' paired ratios (each repeat's pyfunc run over the direct run right beside it, so that a
slow minute of the machine slows both), with the lowest and highest ratio beside it. The labels of the two
paths must agree (checked). The model is the bundled base model with a new two-class head: the
speed of a forward pass does not depend on what the head learned.

    python benchmarks/predict_speed.py                   # 1,000 messages, 5 repeats
    python benchmarks/predict_speed.py --rows 128 --repeat 1   # what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hf_finetune.tasks import registry

CLASSIFICATION = registry.TASKS["text-classification"]

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
TARGET = 0.9
BATCH = 64
NAME = "bench-predict"


def messages(rows: int) -> list[str]:
    from hf_finetune import settings, sources

    raw = sources.read_file(PROJECT_DIR / settings.BUNDLED_DATA, settings.BUNDLED_DATA_COLUMNS)
    return [str(text) for text in raw["text"].head(rows)]


def model_folder(dst: Path) -> Path:
    """The bundled base model with a new ham/spam head, saved as finetune saves ``checkpoint/``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from hf_finetune import hub, settings

    base = hub.resolve_base_model(settings.BUNDLED_BASE_MODEL)
    set_seed(0)
    labels = {0: "ham", 1: "spam"}
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(base).save_pretrained(dst)
    return dst


def register(folder: Path, max_length: int, texts: list[str]) -> None:
    """Log ``folder`` as the log_model step does (save mode full) and make it champion."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from hf_finetune import save_modes
    from hf_finetune.tasks.text_classification import task as tc_task
    from steps import log_model

    signature = infer_signature(
        texts[:3], pd.DataFrame({"label": ["ham"] * 3, "score": [0.5] * 3}), params={"batch_size": 8}
    )
    options = {
        "name": log_model.MODEL_NAME,
        "task": CLASSIFICATION.pipeline_task,
        "signature": signature,
        "input_example": texts[:3],
        "model_config": tc_task.model_config(max_length),
        "pip_requirements": save_modes.pip_requirements(save_modes.installed_versions()),
    }
    with mlflow.start_run():
        info = save_modes.log_candidate(CLASSIFICATION, folder, "full", options, "bench/bert")
    version = mlflow.register_model(info.model_uri, NAME)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version.version)


def direct_predict(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> list[str]:
    import torch

    labels = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(
                texts[start : start + BATCH],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            logits = model(**batch).logits
            labels += [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hf_finetune.profiles import load_config

    max_length = load_config("local").max_length
    texts = messages(args.rows)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        import mlflow
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        os.chdir(tmp)
        folder = model_folder(Path(tmp) / "model")
        register(folder, max_length, texts)
        champion = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)

        def pyfunc() -> list[str]:
            out = champion.predict(texts, params={"batch_size": BATCH})
            return [str(label) for label in out["label"]]

        def direct() -> list[str]:
            return direct_predict(model, tokenizer, texts, max_length)

        def by_length() -> list[str]:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            labels = direct_predict(model, tokenizer, [texts[i] for i in order], max_length)
            out = [""] * len(texts)
            for position, label in zip(order, labels, strict=True):
                out[position] = label
            return out

        paths = {"pyfunc": pyfunc, "direct": direct, "sorted": by_length}
        champion.predict(texts[:BATCH], params={"batch_size": BATCH})  # warm-up
        direct_predict(model, tokenizer, texts[:BATCH], max_length)
        rates: dict[str, list[float]] = {name: [] for name in paths}
        said: dict[str, list[str]] = {}
        for _ in range(args.repeat):
            for name, call in paths.items():
                start = time.perf_counter()
                said[name] = call()
                rates[name].append(len(texts) / (time.perf_counter() - start))
    agree = sum(a == b for a, b in zip(said["pyfunc"], said["direct"], strict=True)) / len(texts)
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{len(texts)} messages, batches of {BATCH}, torch threads as set by default")
    print(f"{'path':<10}{'msg/s (median)':>16}  runs")
    for name, r in rates.items():
        print(f"{name:<10}{median[name]:>16.1f}  {'  '.join(f'{v:.1f}' for v in r)}")
    print(f"labels agree on {agree:.1%} of messages")
    if agree < 0.99:
        raise SystemExit("the two paths disagree: the comparison is not of the same model")
    paired = [p / d for p, d in zip(rates["pyfunc"], rates["direct"], strict=True)]
    print(f"pyfunc / direct per repeat: {'  '.join(f'{r:.3f}' for r in paired)}")
    figures = {
        "pyfunc_over_direct": (statistics.median(paired), TARGET),
        "pyfunc_over_direct_min": (min(paired), None),
        "pyfunc_over_direct_max": (max(paired), None),
        "pyfunc_over_sorted": (median["pyfunc"] / median["sorted"], None),
        "pyfunc_msg_per_s": (median["pyfunc"], None),
    }
    for figure, (value, target) in figures.items():
        line = {"benchmark": "predict_speed", "figure": figure, "value": round(value, 4), "target": target,
                "better": "higher", "unit": "msg/s" if figure.endswith("per_s") else "ratio"}  # fmt: skip
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
