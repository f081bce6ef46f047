"""Directories that appear whole or not at all: a checkpoint or an export is built in a hidden
staging directory beside its destination and renamed into place, so a killed run never leaves a
half-written one behind. The file-sized counterpart is `jsonl.atomic_path`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from constitutional.errors import UserError


def refuse_existing(out: Path, overwrite: bool) -> None:
    """Stop before any slow work when `out` holds something and the caller may not replace it."""
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise UserError("output exists and is not empty; pass --overwrite to replace it", out)


def staging_dir(out: Path) -> Path:
    """A hidden directory beside `out`, with ordinary permissions, to build a checkpoint in;
    `publish_dir` moves it into place, so a killed run leaves no half checkpoint."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0o22)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a checkpoint is an ordinary directory
    return tmp


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a finished checkpoint into place; an existing `out` is swapped out, then deleted."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


@contextmanager
def staged_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory for `out`; publish it when the block ends, delete it if the
    block raises (Ctrl-C included). A block that removes the directory itself publishes nothing:
    that is how a process that must not write `out` (a non-main training rank) bows out."""
    refuse_existing(out, overwrite)
    tmp = staging_dir(out)
    try:
        yield tmp
        if tmp.exists():
            publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
