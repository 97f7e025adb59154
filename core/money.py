"""Money as the store keeps it (kopecks, integers) and as ICML and CommerceML write it (roubles)."""

from __future__ import annotations


def money(kopecks: int) -> str:
    """Kopecks as roubles with two decimals: 12345 → '123.45'."""
    return f"{kopecks // 100}.{kopecks % 100:02d}"
