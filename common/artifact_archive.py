"""The one wire format of a model version's files between gateway and worker: an uncompressed tar.

A version is a flat set of regular files (what ``Model.save`` writes and ``Model.load`` reads), so the
archive holds regular files at the top level only: no folders, links or devices. It is built and read
with the standard library (extraction semantics of ``filter="data"``), and everything else is refused
with an :class:`ArchiveError` whose message says what was wrong, so a bad upload is a clear 4xx.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Mapping

CONTENT_TYPE = "application/x-tar"


class ArchiveError(ValueError):
    """The bytes are not an archive of a version's files; the message says why."""


def check_name(name: str) -> None:
    """A file name a version may hold: one path component, no hidden or special names."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ArchiveError(f"file name {name!r} is not a plain file name (no folders, no '..')")


def pack(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar of ``files`` (name -> content), in name order, with fixed metadata."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            check_name(name)
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def unpack(data: bytes, max_bytes: int) -> dict[str, bytes]:
    """The files of an archive ``pack`` wrote; at most ``max_bytes`` of file content in all."""
    if not data:
        raise ArchiveError("the archive is empty")
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                checked = tarfile.data_filter(member, "")  # refuses absolute paths, '..', links out, devices
                if not checked.isfile():
                    raise ArchiveError(f"{member.name!r} is not a regular file (only files at the top level)")
                check_name(checked.name)
                if checked.name in files:
                    raise ArchiveError(f"{checked.name!r} appears twice")
                total += checked.size
                if total > max_bytes:
                    raise ArchiveError(f"the files hold more than {max_bytes} bytes")
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has content
                content = source.read()
                if len(content) != checked.size:
                    raise ArchiveError(f"{checked.name!r} is truncated")
                files[checked.name] = content
    except tarfile.FilterError as exc:
        raise ArchiveError(f"unsafe member: {exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"not a tar archive, or a truncated one: {exc}") from None
    if not files:
        raise ArchiveError("the archive holds no files")
    return files


def digest(files: Mapping[str, bytes]) -> list[dict]:
    """Each file's name, size and sha256 (hex), sorted by name: what a manifest records."""
    return [{"name": name, "size": len(files[name]), "sha256": hashlib.sha256(files[name]).hexdigest()}
            for name in sorted(files)]
