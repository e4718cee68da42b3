"""FrameWalk: the zstd frame structure followed on the compressed side (selfcheck's "does the
stream end at a frame's end"), against real zstd output split at arbitrary points."""

from __future__ import annotations

import os
import struct

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from erp_backup.adapters.archive.selfcheck import FrameWalk
from erp_backup.core.errors import IntegrityError


def _frames(checksum: bool) -> bytes:
    """Several real frames: compressible text, incompressible bytes (raw blocks), zeros (RLE
    blocks), an empty frame, a frame with its content size, and a skippable frame between them."""
    text = b"".join(b"line %d of some ledger text\n" % i for i in range(40_000))
    c = zstandard.ZstdCompressor(level=3, write_checksum=checksum, write_content_size=False)
    out = c.compressobj()
    parts = [out.compress(text) + out.compress(os.urandom(300_000)) + out.compress(bytes(500_000)) + out.flush()]
    parts.append(struct.pack("<II", 0x184D2A53, 5) + b"hello")
    parts.append(zstandard.ZstdCompressor(write_checksum=checksum).compress(b""))
    parts.append(zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=True).compress(text[:70_000]))
    return b"".join(parts)


STREAMS = {True: _frames(True), False: _frames(False)}


def _walk(data: bytes, cuts: list[int]) -> FrameWalk:
    w = FrameWalk("test")
    prev = 0
    for c in sorted(set(cuts)) + [len(data)]:
        w.feed(data[prev:c])
        prev = c
    return w


@settings(max_examples=60, deadline=None)
@given(checksum=st.booleans(), cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=12))
def test_the_whole_stream_is_complete_however_it_is_split(checksum: bool, cuts: list[int]) -> None:
    data = STREAMS[checksum]
    w = _walk(data, [c % len(data) for c in cuts])
    assert w.complete
    assert w.frames == 3  # the skippable frame is followed, not counted


@settings(max_examples=60, deadline=None)
@given(checksum=st.booleans(), cut=st.integers(min_value=0, max_value=10**9))
def test_a_single_frame_cut_anywhere_is_incomplete(checksum: bool, cut: int) -> None:
    data = zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(os.urandom(200_000) + bytes(1000))
    keep = cut % len(data)  # 0 .. len-1: every proper prefix, including "all but the checksum"
    assert not _walk(data[:keep], [keep // 2]).complete


def test_the_last_checksum_bytes_missing_is_incomplete() -> None:
    data = STREAMS[True]
    for missing in (1, 2, 3, 4):
        assert not _walk(data[:-missing], []).complete


def test_garbage_is_refused() -> None:
    with pytest.raises(IntegrityError, match="not a valid zstd stream"):
        _walk(b"PK\x03\x04 not zstd at all", [])
    with pytest.raises(IntegrityError):
        _walk(STREAMS[False] + b"\x00\x00\x00\x00", [])
