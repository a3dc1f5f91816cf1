"""Every patch of, and every private call into, MLflow, transformers and huggingface_hub: here only.

Each one says why it is there and what it gains; the figures are in docs/PERFORMANCE.md ("What the
project does for speed and memory"). Each patch names its target through ``target``, which stops
with one line naming the supported versions when the attribute is gone (a library upgrade moved
it): the patches fail loudly instead of silently patching nothing. ``python -m steps.compat``
checks every target at once, and so does the test suite (``tests/unit/test_steps_unit.py``); the
check is not made when this module is imported, because that would import transformers into
every step, the light ones too.

- ``uploads_linked``: into a local artifact store, hard links instead of copies (the checkpoint
  log ÷ ``cp`` target, and tracking overhead during training);
- ``linked_checkpoint_copy``: MLflow's checkpoint save would write the weights twice (checkpoint
  log ÷ ``cp``);
- ``recorded_revision``: MLflow would record the hub's latest commit, not the one loaded
  (correctness; offline, the hub cannot be asked);
- ``quick_save_checks``: three checks of MLflow's save answered without their cost (reference ÷
  full log, checkpoint log ÷ ``cp``);
- ``source_named``: a model logged from a local folder would name that folder as its source,
  and a served ``llm/v1`` answer says it as its ``model`` (correctness: never a local path);
- ``hub_offline``: MLflow's model-card and license lookups retry for minutes with no network
  (the default path is offline);
- ``tokenizers_built_empty``: a reference needs the tokenizer's class, not its vocabulary
  (reference ÷ full log);
- ``load_project``, ``run_project_without_waiting``: private MLflow Projects calls (parsing
  ``MLproject`` as ``mlflow run`` does; starting a step without a second ``mlflow run``
  process, seconds per step);
- ``hadoop_filesystem``: PySpark's private handle to the JVM, for the file systems Spark writes
  (``predict`` with engine spark: checks, renames, digests on HDFS/S3/DBFS as on local disk).

None was dropped: each either keeps a benchmark target met or keeps the default path offline.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

from hf_finetune.errors import UserError

# pipeline tasks MLflow can always serve as pyfunc (its check imports other model families to say so)
ALWAYS_SERVABLE = ("text-classification", "text-generation")
SUPPORTED = "mlflow >=3.17,<3.18, transformers <=5.17.0, huggingface_hub 1.x (pyproject.toml)"
# (module, attribute) of every patch and private call below
TARGETS = (
    ("mlflow.store.artifact.local_artifact_repo", "shutil_copytree_without_file_permissions"),
    ("mlflow.transformers.model_io", "shutil"),
    ("mlflow.transformers.flavor_config", "get_latest_commit_for_repo"),
    ("mlflow.utils.environment", "warn_dependency_requirement_mismatches"),
    ("mlflow.transformers", "_should_add_pyfunc_to_model"),
    ("mlflow.transformers", "_fetch_model_card"),
    ("mlflow.transformers", "_extract_license_file_from_repository"),
    ("mlflow.transformers", "is_peft_model"),
    ("mlflow.transformers.flavor_config", "is_peft_model"),
    ("mlflow.transformers.model_io", "is_peft_model"),
    ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
    ("transformers.tokenization_utils_base", "PreTrainedTokenizerBase"),
    ("mlflow.projects._project_spec", "load_project"),
    ("mlflow.projects", "_run"),
    ("mlflow.transformers", "build_flavor_config_from_local_checkpoint"),
)


def target(module_name: str, attribute: str) -> Any:
    """``module_name`` (imported), after checking that it still has ``attribute``."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = None
    if module is None or not hasattr(module, attribute):
        raise UserError(
            f"{module_name}.{attribute} is gone: this project patches it and supports {SUPPORTED}; "
            "install those versions (pip install -e .)"
        )
    return module


def check() -> list[str]:
    """Every target that is missing, as ``module.attribute`` (empty: all there)."""
    missing = []
    for module_name, attribute in TARGETS:
        try:
            target(module_name, attribute)
        except UserError:
            missing.append(f"{module_name}.{attribute}")
    return missing


# ----------------------------------------------------------------------------- artifact store
@contextmanager
def uploads_linked() -> Iterator[None]:
    """While active, folders uploaded into a local artifact store are hard-linked, not copied.

    For files nobody changes in place afterwards: a step's own temporary folder, MLflow's staging
    folder of a model save, artifacts already in the store, the hub cache's files (which the hub
    replaces by renaming, never rewrites). A linked artifact is the same file under another name:
    it stays whole when the other name is deleted, and costs no space or time to store. Another
    filesystem, or any other store (S3, a tracking server), gets MLflow's normal upload.
    ``LocalArtifactRepository.log_artifacts`` copies with this one function: it gets one that links.
    """
    from hf_finetune.files import link_tree

    repo = target("mlflow.store.artifact.local_artifact_repo", "shutil_copytree_without_file_permissions")
    with mock.patch.object(repo, "shutil_copytree_without_file_permissions", link_tree):
        yield


@contextmanager
def linked_checkpoint_copy() -> Iterator[None]:
    """Let MLflow's checkpoint save link the weights into its staging folder instead of copying.

    ``mlflow.transformers.log_model(<checkpoint folder>)`` copies the folder into a temporary
    model folder and then copies that into the artifact store: every weight byte is written
    twice (and read twice). With links, the upload is the only copy (none at all into a local
    store, under ``uploads_linked``). The staging folder is MLflow's own temporary directory,
    deleted after the upload. ``model_io`` uses ``shutil`` for this one call only.
    """
    from hf_finetune.files import link_or_copy

    model_io = target("mlflow.transformers.model_io", "shutil")

    def copytree(src: Any, dst: Any, **kw: Any) -> Any:
        return shutil.copytree(src, dst, copy_function=link_or_copy, **kw)

    with mock.patch.object(model_io, "shutil", types.SimpleNamespace(copytree=copytree)):
        yield


# ----------------------------------------------------------------------------- model logging
@contextmanager
def recorded_revision(revision: str) -> Iterator[None]:
    """Make MLflow record ``revision`` for a reference instead of asking the hub for its latest.

    MLflow 3.17 calls ``get_latest_commit_for_repo`` when ``save_pretrained=False``: offline that
    fails, and online it may name a commit other than the one loaded. The loaded revision is the
    truth; ``log_model.log_reference`` checks afterwards that it is what the MLmodel file says.
    """
    flavor_config = target("mlflow.transformers.flavor_config", "get_latest_commit_for_repo")
    with mock.patch.object(flavor_config, "get_latest_commit_for_repo", lambda repo: revision):
        yield


@contextmanager
def quick_save_checks() -> Iterator[None]:
    """Three checks MLflow's save makes for every model, answered without their cost.

    - That the model's pip requirements match this environment: the project's are made from the
      installed versions (``log_model.installed_versions``), so they match by construction;
      MLflow maps every installed distribution to its modules to find out, for every model.
    - Whether the model is a PEFT model: MLflow imports peft to ask (the largest part of
      logging a reference). A model can only be a ``PeftModel`` if peft is already imported, so
      the answer is read from ``sys.modules`` without importing it; the same answer otherwise.
    - Whether the pipeline can be served as pyfunc: MLflow imports the modules of four graph,
      time-series and reinforcement-learning model families to rule them out (28 modules). A
      text-classification pipeline always can (``ALWAYS_SERVABLE``).

    And two lookups on the hub, while it is offline (``hub_offline``): MLflow asks the hub for the
    model card (when none is given) and for the list of the repository's files (to find a
    license). Offline both can only fail, and MLflow goes on as if nothing was found: the answer
    is that at once, without the failed request and its warning.
    """
    constants = target("huggingface_hub.constants", "HF_HUB_OFFLINE")
    environment = target("mlflow.utils.environment", "warn_dependency_requirement_mismatches")
    flavor = target("mlflow.transformers", "_should_add_pyfunc_to_model")

    def is_peft_model(model: Any) -> bool:
        peft = sys.modules.get("peft")
        return peft is not None and isinstance(model, peft.PeftModel)

    def unless_offline(lookup: Callable[[str], Any]) -> Callable[[str], Any]:
        return lambda repo_id: None if constants.HF_HUB_OFFLINE else lookup(repo_id)

    with ExitStack() as stack:
        stack.enter_context(
            mock.patch.object(environment, "warn_dependency_requirement_mismatches", lambda reqs: None)
        )
        servable = flavor._should_add_pyfunc_to_model
        stack.enter_context(
            mock.patch.object(
                flavor,
                "_should_add_pyfunc_to_model",
                lambda pipeline: getattr(pipeline, "task", None) in ALWAYS_SERVABLE or servable(pipeline),
            )
        )
        for lookup in ("_fetch_model_card", "_extract_license_file_from_repository"):
            original = getattr(target("mlflow.transformers", lookup), lookup)
            stack.enter_context(mock.patch.object(flavor, lookup, unless_offline(original)))
        for name in (
            "mlflow.transformers",
            "mlflow.transformers.flavor_config",
            "mlflow.transformers.model_io",
        ):
            module = target(name, "is_peft_model")  # each module bound its own name
            stack.enter_context(mock.patch.object(module, "is_peft_model", is_peft_model))
        yield


@contextmanager
def source_named(name: str) -> Iterator[None]:
    """A model logged from a checkpoint folder records ``name`` as its source model, not the
    folder's path (a temporary one). MLflow reads the source name back only for a model that
    references its weights (``save_pretrained=False``), never for one whose weights it holds, and
    an ``llm/v1`` model answers with it as the ``model`` of every response. (A pipeline's model is
    named by its ``name_or_path``, which the caller sets.)"""
    module = target("mlflow.transformers", "build_flavor_config_from_local_checkpoint")
    build = module.build_flavor_config_from_local_checkpoint

    def named(*args: Any, **kwargs: Any) -> Any:
        return build(*args, **kwargs) | {"source_model_name": name}

    with mock.patch.object(module, "build_flavor_config_from_local_checkpoint", named):
        yield


@contextmanager
def hub_offline() -> Iterator[None]:
    """No request to the hub in here: for work on model files that are all on this machine.

    MLflow looks for a model card and a license file on the hub for a model with a hub name, even
    when every file is in the local cache. With no network and ``HF_HUB_OFFLINE`` unset, each
    lookup retries with back-off for minutes. The hub client reads this flag at every request,
    so setting it for a while is enough.
    """
    constants = target("huggingface_hub.constants", "HF_HUB_OFFLINE")
    with mock.patch.object(constants, "HF_HUB_OFFLINE", True):
        yield


@contextmanager
def tokenizers_built_empty() -> Iterator[None]:
    """While active, ``AutoTokenizer.from_pretrained`` builds its class without reading the
    vocabulary files (a class that cannot be built empty reads them as usual).

    Of a reference's tokenizer MLflow records its class, hub name and revision, never its
    vocabulary, so ``log_model.empty_tokenizer`` needs the class ``AutoTokenizer``'s own code
    picks, not the vocabulary: only its last step, reading the files, is replaced.
    """
    tokenization = target("transformers.tokenization_utils_base", "PreTrainedTokenizerBase")
    base = tokenization.PreTrainedTokenizerBase
    read = base.__dict__["_from_pretrained"].__func__  # the classmethod's function

    def built_empty(cls: type, files: Any, name_or_path: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return cls(name_or_path=name_or_path)
        except Exception:  # noqa: BLE001 - a class that needs its files: read them
            return read(cls, files, name_or_path, *args, **kwargs)

    with mock.patch.object(base, "_from_pretrained", classmethod(built_empty)):
        yield


# ----------------------------------------------------------------------------- MLflow Projects
def load_project(directory: str) -> Any:
    """MLflow's own parser of an ``MLproject`` file (``mlflow.projects._project_spec``): the
    entry points and parameters exactly as ``mlflow run`` reads them."""
    return target("mlflow.projects._project_spec", "load_project").load_project(directory)


def run_project_without_waiting(**kwargs: Any) -> Any:
    """Start an entry point as MLflow Projects' local backend does, and return at once.

    ``mlflow.projects.run`` offers two ways, neither of which fits: ``synchronous=True`` returns
    only when the step has ended (too late to tag its run for resuming), and ``synchronous=False``
    starts the step through a second ``mlflow run`` process, which imports MLflow again before it
    starts the step. The helper behind both, ``mlflow.projects._run`` (MLflow's own code: the
    run, its project tags and params, the environment, the command), started with
    ``synchronous=True`` returns as soon as the command is started.
    """
    return target("mlflow.projects", "_run")._run(**kwargs)


# ----------------------------------------------------------------------------- Spark
def hadoop_filesystem(spark: Any, uri: str) -> tuple[Any, Any]:
    """Hadoop's ``FileSystem`` for ``uri`` and the ``Path`` it names, from the session's JVM.

    PySpark has no public file-system API; ``SparkSession._jvm`` and ``._jsc`` are its private
    handles to the JVM, through which ``predict`` checks, renames and deletes paths on the file
    systems Spark itself reads and writes (HDFS, S3, DBFS, local), with the cluster's own
    configuration. A Spark Connect session has no JVM: there it is a one-line error.
    """
    jvm = getattr(spark, "_jvm", None)
    jsc = getattr(spark, "_jsc", None)
    if jvm is None or jsc is None:
        raise UserError(
            "this Spark session has no JVM (Spark Connect): run predict on a classic session "
            "(a cluster's driver, spark-submit, or the default local one)"
        )
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(jsc.hadoopConfiguration()), path


def main() -> int:
    missing = check()
    for name in missing:
        print(f"compat: {name} is gone; this project supports {SUPPORTED}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    from hf_finetune import cli

    cli.exit_quickly(main())
