"""Compression of state snapshots: zstd at level 1 (cramjam, which the Kafka client already
needs for lz4), about five times faster than zlib at level 1 on window state, and smaller."""

from __future__ import annotations

import zlib

import cramjam

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def compress(data: bytes) -> bytes:
    return bytes(cramjam.zstd.compress(data, level=1))


def decompress(data: bytes) -> bytes:
    """Also reads zlib, which snapshots used before, so an upgraded worker restores them."""
    if bytes(data[:4]) == _ZSTD_MAGIC:
        return bytes(cramjam.zstd.decompress(data))
    return zlib.decompress(data)
