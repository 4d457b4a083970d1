"""RFC 6962 / RFC 9162 Merkle tree: tree heads, inclusion and consistency proofs, and their verification.

Leaf hash is SHA-256(0x00 || data); an interior node is SHA-256(0x01 || left || right); the empty tree
hashes to SHA-256(""). Sizes and indexes are leaf counts, indexes are zero-based. Verification follows
the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 and raises `ProofError` saying what did not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A Merkle proof does not prove what it was offered for."""


def leaf_hash(data: bytes) -> bytes:
    """MTH of a one-leaf tree: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only list of leaves with RFC 6962 tree heads and proofs for any earlier size.

    Hashes of complete (power-of-two) subtrees are cached: they never change once complete, so root
    and proof computations cost O(log n) cached lookups after the first.
    """

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self._leaves: list[bytes] = []  # leaf hashes
        self._cache: dict[tuple[int, int], bytes] = {}
        for data in leaves:
            self.append(data)

    @classmethod
    def from_leaf_hashes(cls, hashes: Sequence[bytes]) -> MerkleTree:
        """A tree over already-hashed leaves."""
        tree = cls()
        tree._leaves = list(hashes)
        return tree

    def append(self, data: bytes) -> int:
        """Add one leaf (its data, hashed here); returns its index."""
        self._leaves.append(leaf_hash(data))
        return len(self._leaves) - 1

    @property
    def size(self) -> int:
        return len(self._leaves)

    def leaf_hash_at(self, index: int) -> bytes:
        return self._leaves[index]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all)."""
        size = self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 6962 §2.1.1."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise ProofError(f"inclusion proof: index expected in [0, {size}), got {index}")
        return self._path(index, 0, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 6962 §2.1.2 (empty when old_size is 0 or equal)."""
        new_size = self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ProofError(f"consistency proof: old size expected in [0, {new_size}], got {old_size}")
        if old_size in (0, new_size):
            return []
        return self._subproof(old_size, 0, new_size, True)

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return len(self._leaves)
        if not 0 <= size <= len(self._leaves):
            raise ProofError(f"tree size expected in [0, {len(self._leaves)}], got {size}")
        return size

    def _hash(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 1:
            return self._leaves[start]
        cached = self._cache.get((start, end))
        if cached is not None:
            return cached
        k = _split(n)
        value = node_hash(self._hash(start, start + k), self._hash(start + k, end))
        if n & (n - 1) == 0:  # complete subtree: immutable from now on
            self._cache[(start, end)] = value
        return value

    def _path(self, index: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if index - start < k:
            return [*self._path(index, start, start + k), self._hash(start + k, end)]
        return [*self._path(index, start + k, end), self._hash(start, start + k)]

    def _subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [self._hash(start, end)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, start, start + k, whole), self._hash(start + k, end)]
        return [*self._subproof(m - k, start + k, end, False), self._hash(start, start + k)]


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` yields for leaf hash `leaf` at `index` in a tree of `size` (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"inclusion proof: index expected in [0, {size}), got {index}")
    _check_hashes([leaf, *proof], "inclusion proof")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof: expected at most {len(proof) - 1} hashes, got {len(proof)}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"inclusion proof: too short ({len(proof)} hashes) for index {index} of size {size}")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows leaf hash `leaf` at `index` of the tree (`size`, `root`)."""
    got = root_from_inclusion_proof(index, size, leaf, proof)
    if got != root:
        raise ProofError(f"inclusion proof: leaf {index} of size {size} leads to root {got.hex()}, "
                         f"expected {root.hex()}")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Raise ProofError unless the tree (size2, root2) extends (size1, root1) (RFC 9162 §2.1.4.2)."""
    if not 0 <= size1 <= size2:
        raise ProofError(f"consistency proof: sizes expected 0 <= {size1} <= {size2}; a log never shrinks")
    if size1 == size2 or size1 == 0:
        if proof:
            raise ProofError(f"consistency proof: expected no hashes from size {size1} to {size2}, got {len(proof)}")
        if size1 == size2 and root1 != root2:
            raise ProofError(f"consistency proof: two roots for size {size1}: {root1.hex()} and {root2.hex()}")
        return
    if not proof:
        raise ProofError(f"consistency proof: expected hashes from size {size1} to {size2}, got none")
    _check_hashes([root1, root2, *proof], "consistency proof")
    path = [root1, *proof] if size1 & (size1 - 1) == 0 else list(proof)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from {size1} to {size2}: too many hashes ({len(proof)})")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"consistency proof from {size1} to {size2}: too few hashes ({len(proof)})")
    if fr != root1:
        raise ProofError(f"consistency proof: the first {size1} leaves hash to {fr.hex()}, expected {root1.hex()}")
    if sr != root2:
        raise ProofError(f"consistency proof: the {size2} leaves hash to {sr.hex()}, expected {root2.hex()}")


def _check_hashes(hashes: Sequence[bytes], what: str) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what}: expected {HASH_SIZE}-byte hashes, got one of {len(h)} bytes")
