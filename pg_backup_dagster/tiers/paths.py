"""Identifiers as path segments: plain names stay readable, every other byte is percent-encoded.

Two different names never share a path, and no name can leave its folder (`..`, `/`, NUL, quotes).
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def encode_segment(name: str) -> str:
    """Encode one PostgreSQL identifier as a single safe, reversible path segment."""
    if not name:
        raise ValueError("empty identifier cannot become a path segment")
    return "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in name.encode("utf-8"))


def decode_segment(segment: str) -> str:
    """Inverse of encode_segment."""
    return unquote_to_bytes(segment).decode("utf-8")
