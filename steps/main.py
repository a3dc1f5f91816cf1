"""main: run the pipeline's steps in order, each as a child run of one parent run.

Each step runs through MLflow Projects (``mlflow.projects.run``) as its own entry point and its
own MLflow run, and gets the run ID of the step before it. Settings given to ``main`` reach every
step whose entry point in ``MLproject`` declares them; ``MLproject`` is the one list of which
step takes what.

Writes on the parent run: tags ``pipeline.step=main``, ``pipeline.profile`` and
``pipeline.<step>_run_id`` for each step; the merged config as ``config.*`` params.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from steps import common, evaluate, finetune, log_model, persist, prepare, register, tokenize, version_cleanup
from steps.config import PROJECT_DIR, Config
from steps.errors import UserError

STEP = "main"
# (entry point, the parameter that carries the previous step's run ID)
CHAIN: tuple[tuple[str, str | None], ...] = (
    (prepare.STEP, None),
    (tokenize.STEP, tokenize.UPSTREAM),
    (finetune.STEP, finetune.UPSTREAM),
    (evaluate.STEP, evaluate.UPSTREAM),
    (log_model.STEP, log_model.UPSTREAM),
    (register.STEP, register.UPSTREAM),
    (persist.STEP, persist.UPSTREAM),
    (version_cleanup.STEP, version_cleanup.UPSTREAM),
)
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")


# ----------------------------------------------------------------------------- pure functions
def step_parameters(
    declared: set[str],
    profile: str,
    overrides: dict[str, str],
    upstream_param: str | None,
    upstream_run_id: str | None,
) -> dict[str, str]:
    """The parameters one step gets: the profile, the settings it declares, the upstream run ID."""
    params = {"profile": profile}
    params |= {key: value for key, value in overrides.items() if key in declared}
    if upstream_param:
        if upstream_run_id is None:
            raise ValueError(f"{upstream_param} needs the previous step's run ID")
        params[upstream_param] = upstream_run_id
    return params


def parent_tag(run_id: str, step: str) -> str:
    """The run ID of ``step`` above ``run_id`` in the chain."""
    import mlflow

    chain = common.upstream_chain(mlflow.MlflowClient().get_run(run_id))
    return str(chain[step].info.run_id)


def preflight(cfg: Config) -> None:
    """Catch the common mistakes before any run starts: one clear line instead of a failed chain."""
    from steps import modeling

    prepare.resolve_data_path(cfg.data)
    log_model.check_save_mode(cfg.save_mode, adapter=False)
    modeling.check_precision(cfg.precision, modeling.available_device(cfg.device))


# ----------------------------------------------------------------------------- MLflow
def declared_parameters() -> dict[str, set[str]]:
    """Entry point -> the parameters ``MLproject`` declares for it (MLflow's own parser)."""
    from mlflow.projects import _project_spec

    project = _project_spec.load_project(str(PROJECT_DIR))
    return {name: set(ep.parameters) for name, ep in project._entry_points.items()}


def run(args: common.StepArgs, env_manager: str) -> str:
    import mlflow
    from mlflow.exceptions import ExecutionException
    from mlflow.projects import run as run_project

    if env_manager not in ENV_MANAGERS:
        raise UserError(f"unknown env_manager {env_manager!r}: use one of {', '.join(ENV_MANAGERS)}")
    cfg = common.config_for(args)
    preflight(cfg)
    declared = declared_parameters()
    if env_manager == "local":
        # `local` runs `python -m steps.<name>` from PATH: make that this interpreter, so a step
        # never lands in another Python when the virtualenv was not activated.
        bin_dir = os.path.dirname(sys.executable)
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")

    tags = {common.STEP_TAG: STEP, common.PROFILE_TAG: args.profile}
    with mlflow.start_run(run_id=os.environ.pop("MLFLOW_RUN_ID", None), tags=tags) as parent:
        mlflow.set_tags(tags)
        mlflow.log_params({f"config.{k}": str(v) for k, v in dataclasses.asdict(cfg).items()})
        mlflow.log_param("env_manager", env_manager)
        upstream: str | None = None
        for step, upstream_param in CHAIN:
            params = step_parameters(declared[step], args.profile, args.overrides, upstream_param, upstream)
            print(f"{STEP}: running {step}", flush=True)
            try:
                submitted: Any = run_project(
                    str(PROJECT_DIR),
                    entry_point=step,
                    parameters=params,
                    env_manager=env_manager,
                    experiment_id=parent.info.experiment_id,
                    synchronous=True,
                )
            except ExecutionException as exc:
                raise UserError(f"step {step} failed ({exc}); its error is printed above") from None
            upstream = submitted.run_id
            mlflow.set_tag(f"pipeline.{step}_run_id", upstream)
        assert upstream is not None  # CHAIN is not empty
        metrics = mlflow.MlflowClient().get_run(parent_tag(upstream, evaluate.STEP)).data.metrics
        summary: dict[str, float] = {
            k: metrics[k] for k in ("test_f1", "baseline_f1", "keyword_f1") if k in metrics
        }
        mlflow.log_metrics(summary)
        print(f"{STEP}: done; " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items()))
        return parent.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = common.step_parser(__doc__)
    parser.add_argument(
        "--env_manager",
        default="local",
        help="how MLflow runs each step: local (this environment), virtualenv, uv "
        "or conda; `mlflow run` does not pass its own --env-manager down",
    )
    ns, _ = parser.parse_known_args(argv)
    args = common.parse_step_args(parser, argv)
    return common.cli(STEP, lambda: run(args, ns.env_manager or "local"))


if __name__ == "__main__":
    raise SystemExit(main())
