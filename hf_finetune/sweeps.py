"""Hyper-parameter sweeps: the search space, the study's name and storage, and pruning.

The ``sweep`` entry point (``steps/sweep.py``) runs Optuna trials of prepare -> tokenize ->
finetune through ``main`` and its step cache, then the best trial alone through the rest of the
chain. What it shares with ``finetune`` lives here:

- the search space: a YAML file of settings by their own names, each a range (``low``, ``high``,
  ``log``) or ``choices``, and optionally ``when`` (only where other settings have these values:
  LoRA's ``r`` and ``alpha`` where ``peft`` is ``lora``). Every value is checked against the
  settings' own validation before any trial starts;
- the study's default name, derived from what makes two sweeps comparable (the space, the data's
  digest, the task, the base model, the profile, the settings given), so that the same command
  resumes a study and a change starts another;
- the pruning callback ``finetune`` adds when a sweep's trial runs it: the trial's validation
  metric is reported to the study each epoch, and a trial Optuna's pruner stops ends FINISHED,
  tagged ``pipeline.pruned`` (such a run is never a cache hit: its training was cut short).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hf_finetune.chain import FINETUNE, PREPARE, TOKENIZE
from hf_finetune.errors import UserError
from hf_finetune.tags import PRUNED_TAG

STORAGE_ENV = "PIPELINE_SWEEP_STORAGE"  # set for a trial's main: where its study is
STUDY_ENV = "PIPELINE_SWEEP_STUDY"
TRIAL_ENV = "PIPELINE_SWEEP_TRIAL_ID"  # Optuna's trial ID (not its number)
TUNED = (PREPARE, TOKENIZE, FINETUNE)  # a sweep's name must be read by one of these
HEARTBEAT_ENV = "PIPELINE_SWEEP_HEARTBEAT_S"  # a trial's worker says it is alive this often (30 s),
GRACE_ENV = "PIPELINE_SWEEP_GRACE_S"  # and its trial is failed when it has been silent this long (120 s)
WORKERS_ATTR = "workers_joined"  # the study's count of its workers: each one's sampler seed


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One setting of the space."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, str], ...] = ()  # (setting, value): only where all hold

    def values(self) -> list[Any]:
        """The values to check: the ends of a range, or every choice."""
        return list(self.choices) if self.choices else [self.low, self.high]

    def suggest(self, trial: Any, kind: type) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if kind is int:
            return trial.suggest_int(self.name, int(self.low or 0), int(self.high or 0), log=self.log)
        return trial.suggest_float(self.name, float(self.low or 0), float(self.high or 0), log=self.log)

    def applies(self, settings: dict[str, Any]) -> bool:
        return all(str(settings.get(key)).lower() == str(value).lower() for key, value in self.when)


# ----------------------------------------------------------------------------- pure functions
def number(value: Any) -> Any:
    """``1e-5`` as YAML 1.1 reads it (a string: it wants ``1.0e-5``) -> the number meant."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_space(text: str, where: str) -> list[Dimension]:
    """A space's YAML -> its dimensions. Its shape only; ``check_space`` checks the values."""
    import yaml

    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(
            f"{where} must map setting names to ranges, e.g. learning_rate: {{low: 1e-5, high: 1e-3}}"
        )
    dims = []
    for name, spec in raw.items():
        if not isinstance(spec, dict) or not ({"low", "high"} <= set(spec) or "choices" in spec):
            raise UserError(f"{where}: {name} needs low and high, or choices")
        unknown = set(spec) - {"low", "high", "log", "choices", "when"}
        if unknown:
            raise UserError(f"{where}: {name} has unknown keys {', '.join(sorted(unknown))}")
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise UserError(f"{where}: {name}'s when must map settings to values, e.g. when: {{peft: lora}}")
        choices = tuple(spec.get("choices") or ())
        if "choices" in spec and not choices:
            raise UserError(f"{where}: {name}'s choices are empty")
        low, high = number(spec.get("low")), number(spec.get("high"))
        if not choices and not (
            isinstance(low, int | float) and isinstance(high, int | float) and low < high
        ):
            raise UserError(f"{where}: {name} needs numbers low < high (got {low!r}, {high!r})")
        if spec.get("log") and not choices and float(low or 0) <= 0:
            raise UserError(f"{where}: {name} is log-uniform, so low must be above 0")
        dims.append(Dimension(str(name), low, high, bool(spec.get("log")), choices,
                              tuple((str(k), str(v)) for k, v in when.items())))  # fmt: skip
    return dims


def study_name(space_text: str, digest: str, task: str, base_model: str, profile: str,
               settings: dict[str, str]) -> str:  # fmt: skip
    """The default study name: the same command resumes its study; a change starts another."""
    identity = json.dumps([space_text, digest, task, base_model, profile, sorted(settings.items())])
    return f"sweep-{task}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def trial_settings(
    dims: list[Dimension], trial: Any, fixed: dict[str, Any], kinds: dict[str, type]
) -> dict[str, Any]:
    """The values a trial tries: every dimension that applies to the settings (the fixed ones and
    those suggested before it, in the space's order)."""
    chosen: dict[str, Any] = {}
    for dim in dims:
        if dim.applies(fixed | chosen):
            chosen[dim.name] = dim.suggest(trial, kinds[dim.name])
    return chosen


# ----------------------------------------------------------------------------- checks and Optuna
def check_space(dims: list[Dimension], where: str, profile: str, overrides: dict[str, str]) -> None:
    """Every name a setting that a tuned step reads and main passes on, and every value one the
    settings accept: refused in one line before any trial starts."""
    from hf_finetune.config import FIELDS
    from hf_finetune.profiles import load_config
    from hf_finetune.settings import EVERYWHERE

    fixed = dataclasses.asdict(load_config(profile, overrides))
    for dim in dims:
        field = FIELDS.get(dim.name)
        if field is None:
            raise UserError(f"{where}: {dim.name} is not a setting: use the settings' own names (--help)")
        if field.metadata["param"] != EVERYWHERE or not set(field.metadata["steps"]) & set(TUNED):
            raise UserError(
                f"{where}: {dim.name} is not a setting of prepare, tokenize or finetune that main passes on: "
                "a trial would not change with it"
            )
        for key, _ in dim.when:
            if key not in FIELDS:
                raise UserError(f"{where}: {dim.name}'s when names {key}, which is not a setting")
        if not dim.applies(fixed) and not {key for key, _ in dim.when} & {d.name for d in dims}:
            continue  # e.g. LoRA's rank in a sweep whose peft is fixed and not lora: never suggested
        where_it_applies = overrides | dict(dim.when)  # checked as it would be tried
        try:
            load_config(profile, where_it_applies)
        except UserError as exc:
            raise UserError(f"{where}: {dim.name}'s when is refused by the settings: {exc}") from None
        for value in dim.values():
            try:
                load_config(profile, where_it_applies | {dim.name: str(value)})
            except UserError as exc:
                raise UserError(f"{where}: {dim.name}={value} is refused by the settings: {exc}") from None


def heartbeat_seconds() -> tuple[int, int]:
    """(how often a worker records its trial's heartbeat, how long a silent trial lives)."""
    seconds = []
    for name, default in ((HEARTBEAT_ENV, "30"), (GRACE_ENV, "120")):
        value = os.environ.get(name) or default
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"{name}={value} must be a whole number of seconds, at least 1")
        seconds.append(int(value))
    if seconds[1] <= seconds[0]:
        raise UserError(f"{GRACE_ENV} ({seconds[1]}) must be longer than {HEARTBEAT_ENV} ({seconds[0]})")
    return seconds[0], seconds[1]


def absolute(url: str) -> str:
    """A SQLite storage's relative path made absolute: a trial's ``finetune`` runs in the project
    folder, wherever the sweep was started."""
    prefix = "sqlite:///"
    path = url.removeprefix(prefix)
    if not url.startswith(prefix) or path.startswith("/") or path in ("", ":memory:"):
        return url
    return prefix + str(Path(path).resolve())


def pruner() -> Any:
    """The study's pruner, the same in the sweep and in a trial's ``finetune``: a trial is stopped
    at an epoch whose validation figure is worse than the median of earlier trials' at that epoch,
    once two trials have finished."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def join(study: Any, seed: int) -> Any:
    """This worker's sampler: TPE with ``constant_liar``, seeded from ``seed`` and the worker's
    place among those that joined the study (0 for the first, 1 for the next, ...), so a sweep
    run again the same way asks the same settings and workers at once never share a seed. Call
    it under the study's lock: the place is counted in the study (``workers_joined``)."""
    import optuna

    worker = int(study.user_attrs.get(WORKERS_ATTR, 0))
    study.set_user_attr(WORKERS_ATTR, worker + 1)
    return optuna.samplers.TPESampler(seed=(seed * 10_000 + worker) % 2**32, constant_liar=True)


def ask(study: Any) -> Any:
    """``study.ask()`` without Optuna's warning that a heartbeat is meant for ``optimize``: the
    sweep keeps each trial's heartbeat itself (``steps/sweep.py``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return study.ask()


def connect(url: str) -> Any:
    """Optuna's RDB storage at ``url``, with a heartbeat: a killed worker's trial is marked failed
    when it has been silent for the grace period, and tried again once by another worker."""
    import time

    import optuna

    interval, grace = heartbeat_seconds()

    for attempt in range(2):  # workers starting together on a new database race to make its tables
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=grace,
                failed_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except Exception as exc:  # noqa: BLE001 - any failure to open it is the user's storage
            if attempt == 0:
                time.sleep(1.0)
                continue
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"the sweep storage {url} does not connect ({first}): check --storage") from None
    raise AssertionError("unreachable")


def pruning_callbacks(metric: str) -> list[Any]:
    """For ``finetune``: a callback reporting ``eval_<metric>`` to the sweep's trial each epoch and
    stopping the training when the pruner says so; none outside a sweep."""
    if not os.environ.get(TRIAL_ENV):
        return []
    import mlflow
    import optuna
    from transformers import TrainerCallback

    from hf_finetune.training import epoch_number

    study = optuna.load_study(
        study_name=os.environ[STUDY_ENV], storage=os.environ[STORAGE_ENV], pruner=pruner()
    )
    trial = optuna.trial.Trial(study, int(os.environ[TRIAL_ENV]))

    class Pruning(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:  # fmt: skip
            value = (metrics or {}).get(f"eval_{metric}")
            if value is None or not state.is_world_process_zero:
                return
            epoch = epoch_number(state.epoch)
            try:
                trial.report(float(value), step=epoch)
            except optuna.exceptions.UpdateFinishedTrialError:  # failed by its heartbeat: retried elsewhere
                control.should_training_stop = True
                return
            if state.global_step < state.max_steps and trial.should_prune():  # not at its last evaluation
                mlflow.set_tag(PRUNED_TAG, f"epoch {epoch}")
                control.should_training_stop = True

    return [Pruning()]


def space_file(value: str) -> Path:
    """The space's path: as given, else under the project (``sweeps/default.yaml``)."""
    from hf_finetune.settings import PROJECT_DIR

    path = Path(value).expanduser()
    if not path.is_absolute() and not path.exists():
        path = PROJECT_DIR / path
    if not path.is_file():
        raise UserError(
            f"search space {value} not found: give --space a YAML file (e.g. sweeps/default.yaml)"
        )
    return path
