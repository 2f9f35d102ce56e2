"""Snapshot compression: round trip, and snapshots written with zlib before still restore."""

from __future__ import annotations

import zlib

import numpy as np

from pipeline.compress import compress, decompress


def test_round_trip_and_the_zlib_snapshots_written_before() -> None:
    data = np.random.default_rng(7).integers(0, 50, 100_000).astype(np.int64).tobytes()
    packed = compress(data)
    assert len(packed) < len(data) / 4
    assert decompress(packed) == data
    assert decompress(memoryview(b"x" + packed)[1:]) == data  # frames are read as slices
    assert decompress(zlib.compress(data, 1)) == data
