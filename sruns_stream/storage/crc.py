"""crc32c of a concatenation from the crc32c of its parts.

When an archive is made in segments (several upload streams at once, or volumes), each
part's crc32c is known on its own; the whole object's, which GCS reports and the archive
is judged by, is their combination. `crc32c_combine` is zlib's ``crc32_combine`` method
(multiplying by the operator "append n zero bytes" in GF(2), by repeated squaring) with
the Castagnoli polynomial; it costs O(log n), never a pass over the data.
"""

from __future__ import annotations

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


def _operators() -> list[list[int]]:
    """ops[k] appends 2**k zero bytes to a crc32c's message."""
    one_bit = [_POLY] + [1 << n for n in range(31)]
    op = _square(_square(_square(one_bit)))  # 2, 4, then 8 zero bits: one byte
    ops = []
    for _ in range(64):
        ops.append(op)
        op = _square(op)
    return ops


_BYTES = _operators()  # built once: a combine is then log2(len) matrix products


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """crc32c(a + b) from crc32c(a), crc32c(b) and len(b)."""
    if len2 <= 0:
        return crc1
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _times(_BYTES[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2
