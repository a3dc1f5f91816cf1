"""One lock per registered model, held while a step reads the aliases and moves or deletes versions.

Why: two ``main`` runs that register to one name at the same time each read the champion,
judge their own version against it, then move the alias. Unlocked, the slower one can
move ``champion`` onto a version that passed the gate only against the champion both read, over a
better one the other just promoted; and ``version_cleanup`` can delete a version in the instant an
alias moves onto it. Under the lock these sections run one after another, so the registry ends as
some order of the runs, one at a time, would have left it.

How: the lock is a registered model named ``<name>__pipeline_lock`` (a name Unity Catalog accepts
too). Creating a registered model is atomic in every MLflow registry (the name is unique), so
exactly one process succeeds; the lock is deleted when its section ends, which takes seconds
(the gate loads the champion and scores the candidate's test rows with it inside the section).
Its tags name the holder (host, pid, process start time): a lock left by a process that died on
this host (kill -9) is broken at once; one held from another host is waited for, up to
``timeout_s``, and then reported in one line that says how to remove it by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hf_finetune import logs, tracking
from hf_finetune.errors import UserError
from hf_finetune.tags import HOST_TAG, LOCK_FOR_TAG, PID_TAG

log = logs.logger("registry lock")
SUFFIX = "__pipeline_lock"
TIMEOUT_S = 600.0
POLL_S = 0.2
TAKEN = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}


def lock_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def holder(client: Any, lock: str) -> dict[str, str] | None:
    """The lock's tags, or None when nobody holds it (it was released meanwhile)."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(lock).tags)
    except MlflowException:
        return None


def release(client: Any, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def try_take(client: Any, name: str, lock: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            lock,
            tags=tracking.process_tags() | {LOCK_FOR_TAG: name},
            description=f"held while a pipeline step changes {name!r}; deleted when it is done",
        )
    except MlflowException as exc:
        # taken; or taken and released again before the store could read who holds it
        if exc.error_code in TAKEN or exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        if holder(client, lock) is not None:
            return False
        raise
    return True


@contextmanager
def registry_lock(client: Any, name: str, timeout_s: float = TIMEOUT_S) -> Iterator[None]:
    """Hold the lock of registered model ``name`` for the body of the ``with``."""
    lock = lock_name(name)
    deadline = time.monotonic() + timeout_s
    while not try_take(client, name, lock):
        tags = holder(client, lock)
        if tags is None:
            continue  # released between our attempt and the look: try again at once
        if tracking.holder_alive(tags) is False:  # its process died on this host
            dead = tags.get(PID_TAG)
            log.info(f"{lock!r} was left by process {dead}, now dead: breaking it")
            if holder(client, lock) == tags:  # still that dead holder's, not a new one's
                release(client, lock)
            continue
        if time.monotonic() > deadline:
            raise UserError(
                f"registered model {name!r} has been locked for over {timeout_s:.0f} s by process "
                f"{tags.get(PID_TAG, '?')} on host {tags.get(HOST_TAG, '?')}: if that "
                f"process is gone, delete the registered model {lock!r} (MlflowClient()."
                f"delete_registered_model({lock!r})) and rerun"
            )
        time.sleep(POLL_S)
    try:
        yield
    finally:
        release(client, lock)
