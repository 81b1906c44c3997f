"""Run directories on a local disk or behind a URI (s3://, gs://, file://), through pyarrow's filesystems.

Multi-node runs need shared storage; Ray Train/Tune already write there through pyarrow, so
skray's own files (experiment.json, the table, the end marker) go the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from skray.errors import ConfigError


def is_uri(path: str) -> bool:
    return "://" in path


def location(path: str) -> str:
    """A URI stays as it is; a local path becomes absolute (Ray workers may run elsewhere)."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), location(path)


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def subdirs(path: str) -> list[str]:
    """Child directories of ``path`` as locations in the same form (path or URI) as ``path``."""
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    return sorted(join(path, i.base_name) for i in infos if i.type == pafs.FileType.Directory)


def names(path: str) -> set[str]:
    """What a folder holds, by name (nothing if there is no such folder)."""
    fs, p = filesystem(path)
    return {i.base_name for i in fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))}


def is_empty(path: str) -> bool:
    """No such folder, or one with nothing in it."""
    return not names(path)


def read_text(path: str) -> str:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def read_reports(path: str) -> list[dict]:
    """A trial's logged reports (its ``result.json``, one JSON object a line); none if it has no file
    yet, and a line cut by a crash left out, so a killed run's log reads as the reports it finished."""
    reports = []
    for line in read_text(path).splitlines() if exists(path) else []:
        try:
            reports.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return reports


def write_bytes(path: str, data: bytes) -> None:
    """Whole-file write: to a temporary name then renamed locally; object stores put atomically."""
    fs, p = filesystem(path)
    parent, name = p.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{parent}/.{name}.tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, p)
    else:
        with fs.open_output_stream(p) as f:
            f.write(data)


def remove(path: str) -> None:
    """Delete a file if it is there."""
    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def remove_dir(path: str) -> None:
    """Delete a folder and what it holds."""
    fs, p = filesystem(path)
    fs.delete_dir(p)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def ensure_writable(path: str) -> None:
    """Create ``path`` and write a file there now, so that a storage path that cannot hold the run
    (under a regular file, read-only, no credentials) fails in a second, before any worker starts."""
    fs, p = filesystem(path)
    probe = f"{p}/.skray-write-check"
    try:
        fs.create_dir(p, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError, pa.ArrowException) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"storage_path {path!r}: cannot write there ({reason}); set storage_path to a writable folder or URI"
        ) from None
