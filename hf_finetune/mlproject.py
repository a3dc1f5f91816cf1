"""Write both ``MLproject`` files from the settings' declarations (``hf_finetune/config.py``).

    python -m hf_finetune.mlproject          # (make mlproject) rewrite both MLproject files
    python -m hf_finetune.mlproject --check  # exit 1 if either differs from what would be written

Each entry point takes ``profile``, the run ID of the step before it, and every setting that the
step reads and that is declared a parameter; ``main`` takes the settings declared for everywhere
and hands each to the steps that read it. Every setting's default is ``from-profile``, an
optional run ID's ``none``, main's ``env_manager`` ``auto`` and its ``force`` ``none``: words a
reader of the run's parameters understands (MLflow records an empty default as ``''``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_finetune import cli
from hf_finetune.chain import BESIDE, CHAIN, FINETUNE, RESUME_PARAM, SWEEP, VERSION_CLEANUP
from hf_finetune.config import FIELDS
from hf_finetune.settings import EVERYWHERE, FROM_PROFILE, NO_RUN, PROJECT_DIR, STEP_PARAM

ROOT_HEADER = """\
# hf-finetune-pipeline: fine-tune a Hugging Face text classifier, one MLflow run per step.
#
#   prepare ─► tokenize ─► finetune ─► evaluate ─► log_model ─► register ─► persist ─► version_cleanup
#
# `main` runs the chain; each step also runs alone from the run ID of the step before it.
# `predict` scores a file with a registered model (the champion by default); `rollback` moves the
# champion back to an earlier version, recorded; `sweep` tries settings with Optuna and sends the
# best on through the chain. None of them is in the chain.
# A setting's default, from-profile, means "take it from profiles/<profile>.yaml".
# Generated from the settings in hf_finetune/ by `make mlproject`: edit them there, not this file.
name: hf-finetune-pipeline

conda_env: conda.yaml
"""
KUBERNETES_HEADER = """\
# The Kubernetes variant of the project: the same entry points as ../../MLproject, run in a
# container. MLflow's Kubernetes backend needs a `docker_env` project; the root project is conda.
#
#   docker build -f deploy/kubernetes/Dockerfile -t hf-finetune-pipeline-base:0.1.0 .   # once per release
#   MLFLOW_TRACKING_URI=https://mlflow.example.com mlflow run deploy/kubernetes \\
#       --backend kubernetes --backend-config deploy/kubernetes/kubernetes_config.json -P profile=cuda
#
# MLflow builds an image FROM the image below with this folder added, pushes it to the
# `repository-uri` of kubernetes_config.json, and starts kubernetes_job_template.yaml with it.
# The code the commands run is the project installed in the base image (/opt/hf-finetune-pipeline).
# In the container every step runs in that one environment: env_manager is `local`.
# Generated from the settings in hf_finetune/ by `make mlproject`, with ../../MLproject.
name: hf-finetune-pipeline

docker_env:
  image: hf-finetune-pipeline-base:0.1.0
"""
# settings whose parameter has a default of its own rather than the profile's (none today: even
# registered_model's default is the task's, which load_config knows)
OWN_DEFAULTS: set[str] = set()


def default_of(name: str) -> str:
    """A setting's parameter default: the profile's, or its own for ``OWN_DEFAULTS``."""
    return str(FIELDS[name].default) if name in OWN_DEFAULTS else FROM_PROFILE


def entry_point_parameters(env_manager_default: str) -> dict[str, dict[str, str | None]]:
    """Entry point -> its parameters and their defaults, in order (None: required)."""
    entry_points: dict[str, dict[str, str | None]] = {}
    main: dict[str, str | None] = {"profile": "local"}
    main |= {
        name: default_of(name) for name, field in FIELDS.items() if field.metadata["param"] == EVERYWHERE
    }
    entry_points["main"] = main | {"env_manager": env_manager_default, "force": "none"}
    for step, upstream in CHAIN:
        # version_cleanup also runs alone, on no persist run: its upstream may be left out
        required = None if step != VERSION_CLEANUP else NO_RUN
        params: dict[str, str | None] = {"profile": "local"}
        if upstream:
            params[upstream] = required
        params |= {
            name: default_of(name)
            for name, field in FIELDS.items()
            if step in field.metadata["steps"] and field.metadata["param"] in (STEP_PARAM, EVERYWHERE)
        }
        if step == FINETUNE:
            params[RESUME_PARAM] = NO_RUN  # a killed run to resume from (main finds it itself)
        entry_points[step] = params
    # batch scoring, rollback and sweeps: beside the chain, not in it; a sweep takes main's too
    for step in BESIDE:
        beside: dict[str, str | None] = dict(main) if step == SWEEP else {"profile": "local"}
        entry_points[step] = beside | {
            name: default_of(name)
            for name, field in FIELDS.items()
            if step in field.metadata["steps"] and field.metadata["param"] in (STEP_PARAM, EVERYWHERE)
        }
    return entry_points


def yaml_parameter(default: str | None) -> str:
    if default is None:
        return "{type: string}"
    return f"{{type: string, default: {default or chr(34) * 2}}}"


def render(header: str, env_manager_default: str) -> str:
    lines = [header, "entry_points:"]
    for name, params in entry_point_parameters(env_manager_default).items():
        lines += [f"  {name}:", "    parameters:"]
        lines += [f"      {p}: {yaml_parameter(d)}" for p, d in params.items()]
        words = [f"python -m steps.{name}", *(f"--{p} {{{p}}}" for p in params)]
        wrapped = [""]
        for word in words:  # a flag and its value stay on one line
            if wrapped[-1] and len(wrapped[-1]) + 1 + len(word) > 100:
                wrapped.append("")
            wrapped[-1] = f"{wrapped[-1]} {word}".strip()
        lines += ["    command: >-", *(f"      {line}" for line in wrapped), ""]
    return "\n".join(lines).rstrip() + "\n"


def files() -> dict[Path, str]:
    return {
        PROJECT_DIR / "MLproject": render(ROOT_HEADER, "auto"),
        PROJECT_DIR / "deploy" / "kubernetes" / "MLproject": render(KUBERNETES_HEADER, "local"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs, write nothing")
    args = parser.parse_args(argv)
    stale = [path for path, text in files().items() if path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(
                f"{path.relative_to(PROJECT_DIR)} is not what the settings in hf_finetune/ declare: "
                "run make mlproject"
            )
        return 1 if stale else 0
    for path, text in files().items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    cli.exit_quickly(main())
