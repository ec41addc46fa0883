"""Compression before encryption (payload format v2): what is compressed, and bounded decompression.

A payload compressed by ``zstd`` is exactly one zstd frame (RFC 8878) that declares its content
size and needs a window of at most 8 MiB; by ``zlib``, exactly one zlib stream (RFC 1950).
``docs/format-v2.md`` is the specification.

Decompression never inflates without a bound: the caller gives the most bytes a payload may
decompress to, and a stream that would produce more is refused (:class:`TooLarge`) having
produced at most that many bytes (zstd: before anything is decompressed, from the declared
size, which the library then holds the frame to; zlib: an output cap on the inflater).
Anything else wrong with the compressed bytes is :class:`Malformed`. Both carry messages fit
for a caller: no payload bytes, no library internals.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import zstandard

from codec_grpc.core.envelope import COMPRESSIONS, compression_overhead

ZSTD, ZLIB = COMPRESSIONS
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# RFC 8878 3.1.1.1.2: encoders should not need, and decoders need not accept, windows above 8 MB.
ZSTD_MAX_WINDOW = 8 * 1024 * 1024
# zstd's levels above 9 cost many times level 1's CPU for a few points more saved, and tens of MiB per
# compression (docs/benchmarks.md); levels 20-22 would need windows above the 8 MiB a reader accepts.
LEVELS = {ZSTD: range(1, 10), ZLIB: range(1, 10)}
DEFAULT_LEVELS = {ZSTD: 1, ZLIB: 1}  # the cheapest: compression has to pay for its CPU (docs/benchmarks.md)
# zstd contexts kept for reuse, of each kind: creating one costs more than compressing a small payload,
# and a compression context holds megabytes (more at higher levels), so only a few are kept.
POOLED_CONTEXTS = 4
ZLIB_STEP = 1024 * 1024  # most bytes inflated at once


class TooLarge(Exception):
    """The stream decompresses to more than the limit it was given."""


class Malformed(Exception):
    """The bytes are not one well-formed stream of the algorithm; the message says what is wrong."""


class _Contexts:
    """A few zstd contexts of one policy, for reuse; a context serves one thread at a time."""

    def __init__(self) -> None:
        self._compressors: deque[zstandard.ZstdCompressor] = deque()
        self._decompressors: deque[zstandard.ZstdDecompressor] = deque()

    @contextmanager
    def zstd_compressor(self, level: int) -> Iterator[zstandard.ZstdCompressor]:
        try:
            context = self._compressors.pop()  # deque's pop and append are atomic
        except IndexError:
            # Content size declared (the reader's bound), no checksum (GCM's tag authenticates the frame).
            context = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
        yield context
        if len(self._compressors) < POOLED_CONTEXTS:
            self._compressors.append(context)

    @contextmanager
    def zstd_decompressor(self) -> Iterator[zstandard.ZstdDecompressor]:
        try:
            context = self._decompressors.pop()
        except IndexError:
            context = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        yield context
        if len(self._decompressors) < POOLED_CONTEXTS:
            self._decompressors.append(context)


@dataclass(frozen=True)
class CompressionPolicy:
    """What the codec compresses (``algorithm`` None: nothing) and the bounds of decompression.

    Encode compresses a payload only when it has at least ``min_bytes`` and at most
    ``max_decompressed_bytes`` bytes, and the compressed payload, its extra envelope entry
    included, is smaller than it and at most ``max_ratio`` times smaller: so whatever this codec
    writes, a reader with the same bounds decodes. Decode decompresses whatever the envelope
    names, whatever ``algorithm`` is, within ``max_ratio`` times each payload's compressed size and
    ``max_decompressed_bytes`` for all the payloads of one call together.
    """

    algorithm: str | None = None
    level: int | None = None  # None: the algorithm's default
    min_bytes: int = 4096
    max_ratio: int = 100
    max_decompressed_bytes: int = 16 * 1024 * 1024
    _contexts: _Contexts = field(default_factory=_Contexts, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.algorithm is not None and self.algorithm not in LEVELS:
            raise ValueError(f"compression must be one of {', '.join(LEVELS)} or None, got {self.algorithm!r}")
        if self.level is not None:
            if self.algorithm is None:
                raise ValueError("a compression level needs a compression algorithm")
            levels = LEVELS[self.algorithm]
            if self.level not in levels:
                raise ValueError(f"{self.algorithm} levels are {levels.start} to {levels.stop - 1}, got {self.level}")
        if self.min_bytes < 0:
            raise ValueError(f"min_bytes must be at least 0, got {self.min_bytes}")
        if self.max_ratio < 1:
            raise ValueError(f"max_ratio must be at least 1, got {self.max_ratio}")
        if self.max_decompressed_bytes < 1:
            raise ValueError(f"max_decompressed_bytes must be at least 1, got {self.max_decompressed_bytes}")

    @contextmanager
    def compressor(self) -> Iterator[Compressor | None]:
        """A compressor for one batch, in one thread (None when compression is off)."""
        if self.algorithm is None:
            yield None
            return
        level = DEFAULT_LEVELS[self.algorithm] if self.level is None else self.level
        if self.algorithm == ZLIB:
            yield Compressor(self.algorithm, lambda data: zlib.compress(data, level), self)
            return
        with self._contexts.zstd_compressor(level) as context:
            yield Compressor(self.algorithm, context.compress, self)

    def decompress(self, algorithm: str, data: bytes, limit: int) -> bytes:
        """:func:`decompress`, with a pooled zstd context."""
        if algorithm != ZSTD:
            return _zlib_decompress(data, limit)
        with self._contexts.zstd_decompressor() as context:
            return _zstd_decompress(data, limit, context)


class Compressor:
    """Compresses the payloads of one batch, keeping each only where compression pays."""

    __slots__ = ("_compress", "_max_bytes", "_max_ratio", "_min_bytes", "_overhead", "name")

    def __init__(self, algorithm: str, compress: Callable[[bytes], bytes], policy: CompressionPolicy) -> None:
        self.name = algorithm
        self._compress = compress
        self._min_bytes = policy.min_bytes
        self._max_bytes = policy.max_decompressed_bytes
        self._max_ratio = policy.max_ratio
        self._overhead = compression_overhead(algorithm)

    def shrink(self, payload: bytes) -> bytes | None:
        """The compressed payload, or None when it should stay as it is: too small, too large for a
        reader's bound, compressing so well that a reader would take it for a bomb, or not shrinking
        by more than the envelope entry that names the algorithm."""
        size = len(payload)
        if size < self._min_bytes or size > self._max_bytes:
            return None
        packed = self._compress(payload)
        if len(packed) + self._overhead >= size or size > self._max_ratio * len(packed):
            return None
        return packed


def decompress(algorithm: str, data: bytes, limit: int) -> bytes:
    """The decompressed bytes of ``data``; :class:`TooLarge` beyond ``limit`` bytes, :class:`Malformed`
    when ``data`` is not one complete stream of ``algorithm`` (a name of :data:`COMPRESSIONS`)."""
    if algorithm == ZSTD:
        return _zstd_decompress(data, limit, zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW))
    return _zlib_decompress(data, limit)


def _zstd_decompress(data: bytes, limit: int, decompressor: zstandard.ZstdDecompressor) -> bytes:
    if data[:4] != ZSTD_MAGIC:
        raise Malformed("not a zstd frame")
    try:
        frame = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError:
        raise Malformed("not a zstd frame") from None
    size = frame.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN:
        raise Malformed("the zstd frame does not declare its content size")
    if size > limit:
        raise TooLarge()
    if frame.window_size > ZSTD_MAX_WINDOW:
        raise Malformed(f"the zstd frame needs a window above {ZSTD_MAX_WINDOW} bytes")
    try:
        if size == 0:
            # decompress() answers b"" from the header alone: check the frame through to its end.
            stream = decompressor.decompressobj()
            out = stream.decompress(data)
            if out or not stream.eof or stream.unused_data:
                raise Malformed(_ZSTD_CORRUPT)
            return out
        # Into a buffer of the declared size: a frame producing more or less, truncated or
        # followed by anything is an error (the library holds the frame to its declared size).
        return decompressor.decompress(data, allow_extra_data=False)
    except zstandard.ZstdError:
        raise Malformed(
            "the zstd frame is corrupt, truncated, not its declared size, or followed by other bytes"
        ) from None


_ZSTD_CORRUPT = "the zstd frame is corrupt, truncated, not its declared size, or followed by other bytes"


def _zlib_decompress(data: bytes, limit: int) -> bytes:
    """Inflate in steps of at most :data:`ZLIB_STEP` bytes: a stream that passes ``limit`` is refused
    holding at most ``limit`` bytes and a step (joining them would double that)."""
    stream = zlib.decompressobj()
    chunks: list[bytes] = []
    size, pending = 0, data
    while True:
        step = min(ZLIB_STEP, limit + 1 - size)  # never 0: max_length 0 would mean no limit
        try:
            chunk = stream.decompress(pending, step)
        except zlib.error:
            raise Malformed("not a well-formed zlib stream") from None
        size += len(chunk)
        if size > limit:
            raise TooLarge()
        chunks.append(chunk)
        pending = stream.unconsumed_tail
        if stream.eof:
            break
        if not pending and len(chunk) < step:  # all input taken, all output given, no end seen
            raise Malformed("the zlib stream is truncated")
    if stream.unused_data:
        raise Malformed("the zlib stream is followed by other bytes")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
