"""Files on local disk: hard links where they can be made, copies where not.

No MLflow here: ``compat`` stages MLflow's uploads with these, and ``artifacts`` logs with them.
"""

from __future__ import annotations

import contextlib
import os
import shutil


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
