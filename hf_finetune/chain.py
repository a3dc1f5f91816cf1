"""The chain, defined once: the steps in order, the parameter that carries each one's upstream
run ID, and the names by which one step finds another's output (artifact folders and files).

Every step module takes its name from here; ``main`` runs ``CHAIN`` in this order, and
``lineage`` prints it in this order. Tag names are in ``steps.tags``.
"""

from __future__ import annotations

from typing import Final

PREPARE: Final = "prepare"
TOKENIZE: Final = "tokenize"
FINETUNE: Final = "finetune"
EVALUATE: Final = "evaluate"
LOG_MODEL: Final = "log_model"
REGISTER: Final = "register"
PERSIST: Final = "persist"
VERSION_CLEANUP: Final = "version_cleanup"

# (entry point, the parameter that carries the previous step's run ID)
CHAIN: tuple[tuple[str, str | None], ...] = (
    (PREPARE, None),
    (TOKENIZE, "prepare_run_id"),
    (FINETUNE, "tokenize_run_id"),
    (EVALUATE, "finetune_run_id"),
    (LOG_MODEL, "evaluate_run_id"),
    (REGISTER, "log_model_run_id"),
    (PERSIST, "register_run_id"),
    (VERSION_CLEANUP, "persist_run_id"),
)
STEPS = tuple(step for step, _ in CHAIN)
# batch scoring with a registered model: an entry point of its own, after the chain, not in it
PREDICT: Final = "predict"
# champion moved back to an earlier version, recorded: an entry point of its own too
ROLLBACK: Final = "rollback"
# trials of prepare -> tokenize -> finetune through main, then the best one through the rest
SWEEP: Final = "sweep"
BESIDE = (PREDICT, ROLLBACK, SWEEP)  # the entry points beside the chain


def upstream_param(step: str) -> str:
    """The parameter of ``step`` that takes the previous step's run ID."""
    param = dict(CHAIN)[step]
    if param is None:
        raise ValueError(f"{step} is the first step: it has no upstream run")
    return param


# Steps that change the registry are never skipped by main's cache: they are idempotent instead.
ALWAYS_RUN = frozenset({REGISTER, PERSIST, VERSION_CLEANUP})
RESUME_PARAM: Final = "resume_run_id"  # finetune's: the killed run to resume from

# prepare
SPLITS_DIR: Final = "splits"
SPLITS = ("train", "validation", "test")
STATS_FILE: Final = "stats.json"
# tokenize
TOKENIZED_DIR: Final = "tokenized"
LABEL_MAP_FILE: Final = "label_map.json"
# finetune
CHECKPOINT_DIR: Final = "checkpoint"  # the kept epoch's model and tokenizer
RESUME_DIR: Final = "trainer_checkpoints"  # the resumable Trainer state, until the run finishes
ADAPTER_DIR: Final = "adapter"  # LoRA: the kept epoch's adapter (and classifier head), with the tokenizer
EPOCHS_DIR: Final = "epochs"  # epoch_checkpoints=all: epochs/epoch-<n>/, each epoch's model files
# evaluate
EVAL_DIR: Final = "evaluation"
PREDICTIONS_FILE: Final = f"{EVAL_DIR}/predictions.parquet"  # text, label, prediction, score
# log_model
EXPECTED_FILE: Final = "expected_predictions.json"  # the input example's texts and their labels
# register
CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
# version_cleanup
PLAN_FILE: Final = "cleanup_plan.json"
