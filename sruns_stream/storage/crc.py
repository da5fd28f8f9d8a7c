"""crc32c of a concatenation from the crc32c of its parts.

When an archive is made in segments (several upload streams at once, or volumes), each
part's crc32c is known on its own; the whole object's, which GCS reports and the archive
is judged by, is their combination. `crc32c_combine` is zlib's ``crc32_combine`` method
(multiplying by the operator "append n zero bytes" in GF(2), by repeated squaring) with
the Castagnoli polynomial; it costs O(log n), never a pass over the data. Each operator
is applied through byte tables built once, so a combine takes a few microseconds: what
lets each block's crc32c be computed on a worker and only combined on the stream's thread.
"""

from __future__ import annotations

import functools

__all__ = ["crc32c_combine"]

_POLY = 0x82F63B78  # Castagnoli, reflected


def _times(matrix: list[int], vector: int) -> int:
    out = 0
    i = 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]


@functools.cache
def _operator(k: int) -> list[int]:
    """The operator appending 2**k zero bytes to a crc32c's message, as 32 columns."""
    if k == 0:
        one_bit = [_POLY] + [1 << n for n in range(31)]
        return _square(_square(_square(one_bit)))  # 2, 4, then 8 zero bits: one byte
    return _square(_operator(k - 1))


@functools.cache
def _table(k: int) -> list[int]:
    """`_operator(k)` as four 256-entry tables (one per byte of the crc), flattened: applying
    it is then four lookups, not 32 steps of Python. Built once, when first needed."""
    columns = _operator(k)
    table = [0] * 1024
    for byte in range(4):
        base = byte * 256
        for b in range(1, 256):
            low = b & -b
            table[base + b] = table[base + (b ^ low)] ^ columns[byte * 8 + low.bit_length() - 1]
    return table


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """crc32c(a + b) from crc32c(a), crc32c(b) and len(b)."""
    if len2 <= 0:
        return crc1
    k = 0
    while len2:
        if len2 & 1:
            t = _table(k)
            crc1 = (t[crc1 & 0xFF] ^ t[256 + ((crc1 >> 8) & 0xFF)]
                    ^ t[512 + ((crc1 >> 16) & 0xFF)] ^ t[768 + (crc1 >> 24)])
        len2 >>= 1
        k += 1
    return crc1 ^ crc2
