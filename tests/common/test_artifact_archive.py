"""A version's files travel as a tar of top-level regular files; anything else is refused with a reason."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from common.artifact_archive import ArchiveError, digest, pack, unpack

FILES = {"params.npz": b"\x93NUMPY" + bytes(range(256)) * 4, "config.json": b'{"layers": 3}'}


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def member(name: str, content: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    return info, content if kind == tarfile.REGTYPE else None


def test_pack_then_unpack_gives_the_files_back() -> None:
    data = pack(FILES)
    assert unpack(data, max_bytes=10_000) == FILES
    assert pack(dict(reversed(FILES.items()))) == data  # the same files make the same bytes


def test_digest_names_size_and_sha256_sorted_by_name() -> None:
    assert digest(FILES) == [
        {"name": "config.json", "size": 13, "sha256": hashlib.sha256(FILES["config.json"]).hexdigest()},
        {"name": "params.npz", "size": len(FILES["params.npz"]),
         "sha256": hashlib.sha256(FILES["params.npz"]).hexdigest()},
    ]


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"not a tar at all" * 64, "not a tar archive"),
    (pack(FILES)[:700], "truncated"),
    (tar_of(), "holds no files"),
    (tar_of(member("sub/params.npz")), "not a plain file name"),
    (tar_of(member("../escape")), "unsafe member"),
    (tar_of(member("/etc/passwd")), "not a plain file name"),
    (tar_of(member("folder", kind=tarfile.DIRTYPE)), "not a regular file"),
    (tar_of(member("link", kind=tarfile.SYMTYPE, link="params.npz")), "not a regular file"),
    (tar_of(member("a"), member("a")), "appears twice"),
])
def test_anything_but_top_level_files_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ArchiveError, match=reason):
        unpack(data, max_bytes=10_000)


def test_the_size_limit_counts_the_files_content() -> None:
    with pytest.raises(ArchiveError, match="more than 100 bytes"):
        unpack(pack({"a": b"x" * 60, "b": b"y" * 60}), max_bytes=100)
    assert unpack(pack({"a": b"x" * 60}), max_bytes=100) == {"a": b"x" * 60}


@pytest.mark.parametrize("name", ["", "..", "a/b", "a\\b"])
def test_pack_refuses_names_that_are_not_plain(name: str) -> None:
    with pytest.raises(ArchiveError):
        pack({name: b"x"})
