"""evaluate: the fine-tuned model on the held-out test split, beside its baselines on the same rows.

The task (``task``) evaluates. For text generation (docs/text-generation.md): on the test rows,
``test_bits_per_byte`` of the completion and the base model's ``base_bits_per_byte``,
``test_perplexity``, greedy generations' ``test_exact_match``, and where the completions are a few
labels ``prior_bits_per_byte`` and the generated label's ``test_f1`` etc. beside ``classical_*``;
artifact ``evaluation/generations.csv``. What it writes for the text-classification task:

Reads: ``--finetune_run_id``; that run's ``checkpoint/`` (the best model), or with
``--checkpoint_epoch N`` the model it logged for epoch N (a LoRA epoch: its adapter, loaded onto
the base model), and through its upstream tag the tokenize run's ``tokenized/test.parquet``.
Writes:
- metrics ``test_accuracy``, ``test_precision``, ``test_recall``, ``test_f1`` (precision/recall/F1
  of ``positive_label`` for two classes, macro otherwise), and for two classes
  ``test_roc_auc`` and ``test_average_precision`` (of ``positive_label``'s probability);
- the same four on ``probe_data`` (``probe_*``), hand-written modern messages unlike the
  2010-2012 corpus: a shift check; skipped when the probe's labels are not the model's;
- the same four for the classical model a user would build instead (``classical_*``: TF-IDF
  word and character n-grams and a linear SVM, ``C`` chosen on the validation split, param
  ``classical_c``; ``hf_finetune/tasks/text_classification/classical.py``), trained on the same
  train split and scored on the same test rows, and for the base model with its new, untrained
  head (``baseline_*``, same seed as finetune): what fine-tuning gains over both is visible in one run;
- artifacts ``evaluation/confusion_matrix.png``, ``evaluation/classification_report.json``,
  ``evaluation/predictions.parquet`` (text, label, prediction, class probabilities),
  ``evaluation/misclassified.csv`` and, for two classes, the precision-recall and ROC curves
  (``evaluation/{pr,roc}_curve.png`` and their points in ``.csv``);
- tags ``base_model``, ``base_model_revision``, ``data_digest`` (carried from upstream), and
  ``pipeline.checkpoint_path``: the finetune artifact evaluated (log_model logs that model).
"""

from __future__ import annotations

from hf_finetune import artifacts, chain, cli, devices, hub, logs, tracking
from hf_finetune.chain import EVAL_DIR, PREDICTIONS_FILE
from hf_finetune.config import Config
from hf_finetune.tags import BASE_MODEL_TAG, CHECKPOINT_PATH_TAG, UPSTREAM_TAG
from hf_finetune.tasks import registry
from hf_finetune.tasks.base import Evaluation

STEP = chain.EVALUATE
log = logs.logger(STEP)
UPSTREAM = chain.upstream_param(STEP)


# ----------------------------------------------------------------------------- MLflow
def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow

    task = registry.task_of(cfg)
    upstream = tracking.get_upstream(upstream_run_id, chain.FINETUNE, UPSTREAM, cfg.task)
    tokenize_run_id = upstream.data.tags[UPSTREAM_TAG]
    client = mlflow.MlflowClient()
    device = devices.available_device(cfg.device)

    # an epoch that was not logged fails here, before a run starts
    path = artifacts.checkpoint_path(upstream.data.tags, upstream.info.run_id, cfg.checkpoint_epoch)

    with tracking.step_run(STEP, profile, cfg, upstream.info.run_id) as (run_id, tmp):
        frames, label2id = artifacts.read_tokenized(tokenize_run_id, tmp / "data")
        out = tmp / EVAL_DIR
        out.mkdir()
        job = Evaluation(
            checkpoint=artifacts.download_checkpoint(upstream.info.run_id, tmp / "model", path),
            base_model=hub.resolve_base_model(upstream.data.tags[BASE_MODEL_TAG]),
            frames=frames,
            label2id=label2id,
            max_length=int(client.get_run(tokenize_run_id).data.params["config.max_length"]),
            device=device,
            out=out,
        )
        mlflow.set_tag(CHECKPOINT_PATH_TAG, path)
        evaluated = task.evaluate(job, cfg)
        mlflow.log_params(evaluated.params)
        mlflow.log_metrics(evaluated.metrics)
        mlflow.log_metric("test_rows", float(len(frames["test"])))
        evaluated.predictions.to_parquet(tmp / PREDICTIONS_FILE, index=False)
        mlflow.log_artifacts(str(out), EVAL_DIR)
        mlflow.set_tags(tracking.lineage_tags(upstream))
        suffix = f"_{task.gate_metric}"
        log.info(", ".join(f"{k}={v:.4f}" for k, v in evaluated.metrics.items() if k.endswith(suffix)))
        return run_id


def main(argv: list[str] | None = None) -> int:
    return cli.step_main(STEP, __doc__, UPSTREAM, run, argv)


if __name__ == "__main__":
    cli.exit_quickly(main())
