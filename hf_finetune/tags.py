"""Every tag name the pipeline writes, in one place.

The scheme: tags about the pipeline's own mechanics (which step, which process, the cache, what
was resumed or reused) are prefixed ``pipeline.``; the tags that describe a model and its
lineage to a reader of the registry (``data_digest``, ``base_model``, ``gate``, ``test_f1``, ...)
are not: users query them by these names, and the README documents them.
"""

from __future__ import annotations

from typing import Final

# every step run
STEP_TAG: Final = "pipeline.step"
PROFILE_TAG: Final = "pipeline.profile"
UPSTREAM_TAG: Final = "pipeline.upstream_run_id"
# which process holds a step's run: main marks a RUNNING run whose process is gone as KILLED
HOST_TAG: Final = "pipeline.host"
PID_TAG: Final = "pipeline.pid"
PID_STARTED_TAG: Final = "pipeline.pid_started"
ALIVE_TAG: Final = "pipeline.alive_at"  # the holder's clock (epoch seconds), renewed while the run is open
# main's step cache
KEY_TAG: Final = "pipeline.cache_key"
INPUTS_TAG: Final = "pipeline.cache_inputs"
REUSED_FROM_TAG: Final = "pipeline.reused_from"
# lineage, carried down the chain and onto every registered version
DATA_DIGEST_TAG: Final = "data_digest"
BASE_MODEL_TAG: Final = "base_model"
BASE_REVISION_TAG: Final = "base_model_revision"
BASE_REVISION_SOURCE_TAG: Final = "base_model_revision_source"
LINEAGE_TAGS = (BASE_MODEL_TAG, BASE_REVISION_TAG, BASE_REVISION_SOURCE_TAG, DATA_DIGEST_TAG)
PROMPT_TEMPLATE_TAG: Final = "prompt_template"  # text-generation: the template tokenize applied
TASK_LINEAGE_TAGS = (PROMPT_TEMPLATE_TAG,)  # carried down too, where a task's tokenize set them
DATA_SOURCE_TAG: Final = "data_source"  # prepare's: the data as given
DATA_CARD_TAG: Final = "pipeline.data_card"  # prepare's: JSON of the corpus's dataset.yaml, if any
# finetune
RESUMED_FROM_TAG: Final = "pipeline.resumed_from"
LAST_CHECKPOINT_TAG: Final = "pipeline.last_checkpoint"
PEFT_TAG: Final = "pipeline.peft"
BEST_EPOCH_TAG: Final = "pipeline.best_epoch"
EPOCH_CHECKPOINTS_TAG: Final = "pipeline.epoch_checkpoints"  # JSON: {"<epoch>": "<artifact path>"}
TRAINER_STATE_TAG: Final = "pipeline.trainer_state"  # "kept" or "dropped" once the run has finished
# evaluate
CHECKPOINT_PATH_TAG: Final = "pipeline.checkpoint_path"  # which of finetune's models was evaluated
# log_model
MODEL_URI_TAG: Final = "pipeline.model_uri"
MODEL_ID_TAG: Final = "pipeline.model_id"
BASELINE_URI_TAG: Final = "pipeline.baseline_model_uri"
SAVE_MODE_TAG: Final = "save_mode"
# register, on the registered model and its versions
TASK_TAG: Final = "task"
PERSISTED_TAG: Final = "persisted"
REGISTERED_MODEL_TAG: Final = "registered_model"
VERSION_TAG: Final = "model_version"
ALREADY_TAG: Final = "already_registered"  # on a register run that found its model registered before
PENDING_TAG: Final = "aliases_pending"  # the aliases this version should get; removed once it has them
# the gate's decision and the comparison behind it, on every version
GATE_TAG: Final = "gate"
GATE_REASON_TAG: Final = "gate_reason"
COMPARED_TAG: Final = "gate_compared_version"
ROWS_TAG: Final = "gate_rows"
EXCLUDED_TAG: Final = "gate_rows_excluded"
CANDIDATE_F1_TAG: Final = "gate_candidate_f1"
CHAMPION_F1_TAG: Final = "gate_champion_f1"
LOW_TAG: Final = "gate_f1_diff_low"
HIGH_TAG: Final = "gate_f1_diff_high"
# ... and the same comparison in every task's terms: the metric's name, both figures, and the
# interval of the difference turned so that a positive value always means the candidate is better
GATE_METRIC_TAG: Final = "gate_metric"
GATE_CANDIDATE_TAG: Final = "gate_candidate"
GATE_CHAMPION_TAG: Final = "gate_champion"
GATE_LOW_TAG: Final = "gate_diff_low"
GATE_HIGH_TAG: Final = "gate_diff_high"
# persist
VERIFIED_TAG: Final = "verified"
# rollback: on the version champion was moved away from (the rollback run's ID, and why); only an
# explicit rollback to a version so marked makes it champion again
ROLLED_BACK_TAG: Final = "rolled_back_by"
ROLLED_BACK_REASON_TAG: Final = "rolled_back_reason"
# predict: the model a scoring job used, as given and as the registered version it resolved to
MODEL_VERSION_TAG: Final = "pipeline.model_version"  # with MODEL_URI_TAG
# the registry lock (a registered model of its own)
LOCK_FOR_TAG: Final = "pipeline.lock_for"
# sweeps (hf_finetune/sweeps.py)
PRUNED_TAG: Final = "pipeline.pruned"  # on a finetune the pruner stopped: never a cache hit
TRIAL_TAG: Final = "pipeline.sweep_trial"  # on a trial's main run: its number in the study
SWEEP_RUN_TAG: Final = "pipeline.sweep_run_id"  # on the best trial's main run: the sweep that chose it
