"""version_cleanup: delete old versions of the registered model, never one an alias points to.

Reads: ``registered_model``, ``keep_last``, ``keep_champions``, ``dry_run``,
``delete_registered_model`` from the config; ``--persist_run_id`` (optional: the chain passes it,
to record where the run sits).
Writes (registry): deletes every version that is neither among the newest ``keep_last``, nor named
by an alias, nor one of the last ``keep_champions`` champions (from the champion's history,
``hf_finetune/registry/history.py``: what a rollback goes back to; where some of those were
rolled back from, older champions are kept too, until ``keep_champions`` champions not rolled
back from, the champion included, are kept). The plan and the deletions run
under the registered model's lock (see ``registry_lock``), so no register or persist of the same
name moves an alias meanwhile; each version's aliases are read again just before it is deleted, so
one set by hand is kept too.
``dry_run`` prints the plan and the champions it protects, and changes nothing (not even the
history: a move by hand is recorded by the next step that changes the registry).
``delete_registered_model=true`` deletes the whole registered model, aliases and all, and prints
every version it deleted; nothing else ever does. The history records its aliases going to none
(``how``: ``cleanup``); a model of the same name made later starts a new life there.
Writes (run): metrics ``versions_before``, ``versions_deleted``, ``versions_kept``; artifact
``cleanup_plan.json``; tag ``dry_run``.

What it reclaims: registry entries only. The logged models and runs stay (they are the lineage of
what was deleted) and so do their files. To free the disk, delete the runs or logged models you no
longer need, then run ``mlflow gc`` (see README, "Cleaning up").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from hf_finetune import chain, cli, logs, tracking
from hf_finetune.chain import PLAN_FILE
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.registry import gate, history, locks, timeline

STEP = chain.VERSION_CLEANUP
log = logs.logger(STEP)
UPSTREAM = chain.upstream_param(STEP)
DELETED = "the registered model was deleted (version_cleanup delete_registered_model=true)"


# ----------------------------------------------------------------------------- pure functions
def versions_to_delete(
    versions: Iterable[int | str],
    keep_last: int,
    aliases: Mapping[str, int | str],
    champions: Iterable[int] = (),
) -> list[int]:
    """Versions outside the newest ``keep_last`` that no alias names and that are not among
    ``champions`` (the last few, kept for a rollback), oldest first.

    Versions compare as ints: the registry returns them as strings in some APIs and ints in
    others, and "10" < "9" as strings would delete the wrong ones.
    """
    if keep_last < 1:
        raise ValueError("keep_last must be at least 1")
    numbers = sorted({int(v) for v in versions}, reverse=True)
    protected = {int(v) for v in aliases.values()} | set(numbers[:keep_last]) | set(champions)
    return sorted(v for v in numbers if v not in protected)


def kept_champions(
    latest_first: list[int], versions: Mapping[int, Mapping[str, str]], keep: int
) -> list[int]:
    """The champions kept for a rollback: the last ``keep`` that still exist, and as many more as
    it takes to keep ``keep`` that were not rolled back from (the champion counts among them)."""
    there = [v for v in latest_first if v in versions]
    targets = [v for v in there if not gate.rolled_back(dict(versions[v]))]
    return sorted(set(there[:keep]) | set(targets[:keep]), key=there.index)


# ----------------------------------------------------------------------------- MLflow
def run(upstream_run_id: str | None, cfg: Config, profile: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    upstream = tracking.get_upstream(upstream_run_id, chain.PERSIST, UPSTREAM) if upstream_run_id else None
    name = cfg.registered_model
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise UserError(
            f"registered model {name!r} does not exist in {mlflow.get_tracking_uri()}: "
            "check --registered_model"
        ) from None

    with (
        tracking.step_run(STEP, profile, cfg, upstream.info.run_id if upstream else None) as (run_id, tmp),
        locks.registry_lock(client, name),  # no alias moves while the plan is made and carried out
    ):
        # a move by hand since the last look, recorded first (read only, in a dry run)
        past = timeline.of(*history.looked(client, name)) if cfg.dry_run else history.observe(client, name)
        found = {int(v.version): dict(v.tags) for v in client.search_model_versions(f"name = '{name}'")}
        versions = sorted(found)
        aliases = dict(client.get_registered_model(name).aliases)  # search leaves aliases empty
        champions = kept_champions(timeline.champions_latest_first(past), found, cfg.keep_champions)
        protected: list[int] = []  # champions kept that keep_last and the aliases would not have kept
        if cfg.delete_registered_model:
            plan = sorted(versions)
            log.info(f"deleting registered model {name!r} with versions {plan} and aliases {aliases}")
            if not cfg.dry_run:  # its aliases go first, recorded: the history says when they went
                for alias in timeline.ALIASES:
                    history.move(client, name, alias, None, "cleanup", DELETED, run_id)
                client.delete_registered_model(name)
            deleted = [] if cfg.dry_run else plan
        else:
            plan = versions_to_delete(versions, cfg.keep_last, aliases, champions)
            protected = sorted(set(versions_to_delete(versions, cfg.keep_last, aliases)) - set(plan))
            deleted = []
            for number in plan if not cfg.dry_run else []:
                current = client.get_model_version(name, str(number))
                if current.aliases:  # set by hand, outside the lock, after the plan was made
                    log.info(f"keeping v{number}: it now holds {', '.join(current.aliases)}")
                    continue
                client.delete_model_version(name, str(number))
                deleted.append(number)
            verb = "would delete" if cfg.dry_run else "deleted"
            log.info(
                f"{name}: {verb} {plan or 'nothing'}; kept the newest {cfg.keep_last}, aliased {aliases}"
                f" and the last {cfg.keep_champions} champions {champions}"
                + (f" (protected from deletion: {protected})" if protected else "")
            )
            if not cfg.dry_run:
                history.seen(client, name)
        (tmp / PLAN_FILE).write_text(
            json.dumps(
                {
                    "registered_model": name,
                    "versions": sorted(versions),
                    "aliases": aliases,
                    "keep_last": cfg.keep_last,
                    "keep_champions": cfg.keep_champions,
                    "champions": champions,
                    "protected": protected,
                    "planned": plan,
                    "deleted": deleted,
                    "dry_run": cfg.dry_run,
                    "delete_registered_model": cfg.delete_registered_model,
                },
                indent=2,
            )
        )
        mlflow.log_artifact(str(tmp / PLAN_FILE))
        mlflow.log_metrics(
            {
                "versions_before": len(versions),
                "versions_deleted": len(deleted),
                "versions_kept": len(versions) - len(deleted),
            }
        )
        mlflow.set_tag("dry_run", str(cfg.dry_run).lower())
        return run_id


def main(argv: list[str] | None = None) -> int:
    parser = cli.step_parser(__doc__, step=STEP)
    parser.add_argument(f"--{UPSTREAM}", default=None, help="run ID of the persist run (optional)")
    args = cli.parse_step_args(parser, argv, UPSTREAM)
    return cli.cli(STEP, lambda: run(args.upstream_run_id, cli.config_for(args), args.profile))


if __name__ == "__main__":
    cli.exit_quickly(main())
