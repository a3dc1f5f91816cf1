"""A ``.env`` file of ``KEY=value`` lines: read it, and rewrite one key atomically, private to us.

Only what the server tools need: comments, blank lines, optional ``export`` and quotes. The
process environment wins over the file, as with docker compose.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path

from hf_finetune.errors import UserError


def parse(text: str, source: str = ".env") -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"{source} line {number} is not KEY=value: fix or remove that line")
        try:
            words = shlex.split(value, comments=True)
        except ValueError:
            raise UserError(f"{source} line {number}: unbalanced quotes in the value of {key}") from None
        values[key] = " ".join(words)
    return values


def read(path: Path) -> dict[str, str]:
    """The file's values; an absent file is empty."""
    if not path.exists():
        return {}
    return parse(path.read_text(encoding="utf-8"), str(path))


def settings(path: Path, keys: tuple[str, ...], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``keys`` from ``.env``, each overridden by the environment where it is set there."""
    environ = os.environ if environ is None else environ
    from_file = read(path)
    merged = {key: from_file[key] for key in keys if key in from_file}
    merged.update({key: environ[key] for key in keys if key in environ})
    return merged


def write(path: Path, updates: Mapping[str, str]) -> None:
    """Set ``updates`` in ``path`` (others kept, in order), atomically, mode 0600."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    pending = dict(updates)
    out = []
    for line in lines:
        key = line.strip().removeprefix("export ").partition("=")[0].strip()
        if key in pending:
            out.append(f"{key}={shlex.quote(pending.pop(key))}")
        else:
            out.append(line)
    out.extend(f"{key}={shlex.quote(value)}" for key, value in pending.items())
    write_private(path, "\n".join(out) + "\n")


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by its owner only (mode 0600), atomically.

    The new file is written beside the old one and renamed over it: a crash leaves either the
    old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
