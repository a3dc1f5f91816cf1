"""The command line every step shares, and its exit codes.

A step's ``main(argv)`` is a few lines over these: ``step_parser`` and ``parse_step_args`` make
``--profile``, the upstream run-ID flag and one flag per setting the step reads; ``cli`` turns a
``UserError`` into one line on stderr and exit status 2, and a full disk into exit status 3.
Every line a step prints goes through ``logs.logger``: ``<step>: <message>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import gc
import shutil
from collections.abc import Callable
from typing import NoReturn

from hf_finetune.config import FIELDS, Config, fields_of
from hf_finetune.errors import UserError
from hf_finetune.logs import logger
from hf_finetune.profiles import load_config
from hf_finetune.settings import EVERYWHERE, FROM_PROFILE, NO_RUN

EXIT_USER_ERROR = 2


EXIT_NO_SPACE = 3


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
    upstream: str | None,
    run: Callable[[str | None, Config, str], str],
    argv: list[str] | None,
) -> int:
    """The whole CLI of a step: the run ID of the step before it (``upstream``, its flag; None for
    an entry point beside the chain), ``--profile`` and the settings it reads."""
    parser = step_parser(doc, upstream, step)
    args = parse_step_args(parser, argv, upstream)
    return cli(step, lambda: run(args.upstream_run_id, config_for(args), args.profile))
