"""Files that readers in other processes never see half-written: servers, Ray replicas and
jobs open the same Feast repo and state files while another process may be writing them."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and move it into place: readers see the old content or
    the new, never a mix, and concurrent writers never share a temporary file."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_if_changed(path: Path, text: str) -> None:
    """Write ``path`` only when it is missing or holds other content: an unchanged file keeps
    its inode and mtime, and readers that hold it open are never disturbed."""
    if not path.exists() or path.read_text() != text:
        write_atomically(path, text)
