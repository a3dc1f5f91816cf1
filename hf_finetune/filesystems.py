"""Where batch scoring reads and writes: local paths, or URIs of the file systems Spark reaches.

Both kinds answer the same questions (exists, is a folder, digest, rename, delete), so ``predict``
checks, publishes and cleans up the same way on local disk as on HDFS, S3 or DBFS.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hf_finetune import compat, sources
from hf_finetune.config import Config
from hf_finetune.errors import UserError
from hf_finetune.scoring import first_line
from hf_finetune.settings import PROJECT_DIR

URI = re.compile(r"^[A-Za-z][\w+.-]+:/")


def is_uri(text: str) -> bool:
    """``hdfs://…``, ``s3a://…``, ``dbfs:/…``, ``file:/…``: a place only Spark reads and writes."""
    return bool(URI.match(text))


class LocalFiles:
    """Paths on this machine."""

    def exists(self, loc: str) -> bool:
        return Path(loc).exists() or Path(loc).is_symlink()

    def is_dir(self, loc: str) -> bool:
        return Path(loc).is_dir() and not Path(loc).is_symlink()

    def names(self, loc: str) -> list[str]:
        """The files under a folder, recursively, relative to it."""
        return sorted(str(p.relative_to(loc)) for p in Path(loc).rglob("*") if p.is_file())

    def parent_exists(self, loc: str) -> bool:
        return Path(loc).parent.is_dir()

    def digest(self, loc: str) -> str:
        return sources.file_digest(Path(loc))

    def first_byte(self, loc: str) -> bytes:
        with open(loc, "rb") as f:
            return f.read(1)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def delete(self, loc: str) -> None:
        if self.is_dir(loc):
            shutil.rmtree(loc, ignore_errors=True)
        elif self.exists(loc):
            Path(loc).unlink()

    def for_spark(self, loc: str) -> str:
        return Path(loc).as_uri()

    def canonical(self, loc: str) -> str:
        return str(Path(loc).resolve())


class HadoopFiles:
    """Places Spark reads and writes (HDFS, S3, DBFS, ...), through Hadoop's file systems in the
    session's JVM, with the cluster's own configuration."""

    def __init__(self, spark: Any) -> None:
        self.spark = spark

    def _at(self, loc: str) -> tuple[Any, Any]:

        try:
            return compat.hadoop_filesystem(self.spark, loc)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - Py4J wraps every JVM error: an unknown scheme, no access
            raise UserError(
                f"Spark cannot reach {loc!r} ({first_line(exc)}): check the URI and access"
            ) from None

    def exists(self, loc: str) -> bool:
        fs, path = self._at(loc)
        return bool(fs.exists(path))

    def is_dir(self, loc: str) -> bool:
        fs, path = self._at(loc)
        return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())

    def _files(self, loc: str) -> list[tuple[str, int, int]]:
        fs, path = self._at(loc)
        root = str(fs.makeQualified(path).toString()).rstrip("/")
        found, listing = [], fs.listFiles(path, True)
        while listing.hasNext():
            status = listing.next()
            name = str(status.getPath().toString())[len(root) :].lstrip("/")
            found.append((name, int(status.getLen()), int(status.getModificationTime())))
        return sorted(found)

    def names(self, loc: str) -> list[str]:
        return [name for name, _, _ in self._files(loc)]

    def parent_exists(self, loc: str) -> bool:
        return True  # object stores have no folders to make first; Spark makes what it needs

    def digest(self, loc: str) -> str:
        """sha256 of every file's name, size and modification time (not its bytes: the input is
        read once, by Spark)."""
        listing = "\n".join(f"{name}\t{size}\t{mtime}" for name, size, mtime in self._files(loc))
        return hashlib.sha256(listing.encode()).hexdigest()

    def first_byte(self, loc: str) -> bytes:
        fs, path = self._at(loc)
        stream = fs.open(path)
        try:
            return bytes([stream.read()]) if fs.getFileStatus(path).getLen() else b""
        finally:
            stream.close()

    def rename(self, src: str, dst: str) -> None:
        fs, path = self._at(src)
        if not fs.rename(path, self._at(dst)[1]):
            raise OSError(f"could not rename {src} to {dst}")

    def delete(self, loc: str) -> None:
        fs, path = self._at(loc)
        if fs.exists(path):
            fs.delete(path, True)

    def for_spark(self, loc: str) -> str:
        return loc

    def canonical(self, loc: str) -> str:
        fs, path = self._at(loc)
        return str(fs.makeQualified(path).toString())


Files = LocalFiles | HadoopFiles


DIGEST_OF = {LocalFiles: "bytes", HadoopFiles: "names, sizes and modification times of its files"}


def locations(cfg: Config, files: Files) -> tuple[str, str]:
    """The input and the output, checked: (data, output) as ``files`` names them."""
    if not cfg.output:
        raise UserError("output is not set: pass -P output=<file.parquet> (engine spark: a folder)")
    data = cfg.data
    if isinstance(files, LocalFiles):
        candidate = Path(data).expanduser()
        if not candidate.is_absolute() and not candidate.exists() and (PROJECT_DIR / candidate).exists():
            candidate = PROJECT_DIR / candidate  # the bundled data, from anywhere
        data = str(candidate.absolute())
    output = str(Path(cfg.output).expanduser().absolute()) if isinstance(files, LocalFiles) else cfg.output
    if not files.exists(data):
        raise UserError(
            f"data {cfg.data!r} does not exist: pass -P data=<a csv, tsv, json, jsonl or parquet "
            "file, or a folder of parquet files>"
        )
    if files.exists(output):
        if not cfg.overwrite:
            raise UserError(
                f"output {output!r} exists: pass another path, or -P overwrite=true to replace it"
            )
        if files.is_dir(output) and not only_scores(files.names(output)):
            raise UserError(
                f"output {output!r} is a folder with files other than a scoring job's parquet "
                "in it: it is not replaced even with overwrite=true; pass another path"
            )
    if not files.parent_exists(output):
        raise UserError(f"output's folder {str(Path(output).parent)!r} does not exist: create it first")
    if overlapping(files.canonical(data), files.canonical(output)):
        raise UserError(f"output {output!r} and data {data!r} overlap: the output would replace the input")
    return data, output


def overlapping(a: str, b: str) -> bool:
    """Is one of two canonical paths the other, or inside it?"""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def only_scores(names: Iterable[str]) -> bool:
    """Are these a scoring job's files only (parquet parts, Spark's checksums and markers)?"""
    return all(Path(n).suffix in (".parquet", ".crc") or Path(n).name.startswith("_") for n in names)


def check_text_column(columns: Iterable[str], cfg: Config, data: str) -> None:
    columns = list(columns)
    if cfg.text_column not in columns:
        raise UserError(
            f"{Path(data).name} has no column {cfg.text_column!r}; its columns are "
            f"{', '.join(map(str, columns)) or 'none'}: pass -P text_column=<one of them>"
        )


def publish(files: Files, tmp: str, dst: str) -> None:
    """Put the finished output in place, replacing what was there (overwrite)."""
    if files.is_dir(dst):
        old = f"{dst.rstrip('/')}.old-{uuid.uuid4().hex[:8]}"
        files.rename(dst, old)
        try:
            files.rename(tmp, dst)
        except BaseException:
            files.rename(old, dst)  # the previous output, back in place
            raise
        files.delete(old)
    else:
        files.delete(dst)
        files.rename(tmp, dst)
