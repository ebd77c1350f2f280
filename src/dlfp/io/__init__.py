"""Shared I/O: atomic writes, staged stage outputs with locks, hashing, receipts, image decoding."""
