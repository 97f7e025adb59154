"""What retailCRM takes as an offer's picture, one rule for every source of pictures (MoySklad, CommerceML).

DOMAIN.md: "`picture`: jpg/png ≤ 2 MB". Which megabyte is not said: the smaller reading (2,000,000 bytes) is
kept, so that whatever passes here retailCRM takes under either.
"""

from __future__ import annotations

MAX_PICTURE_BYTES = 2_000_000
# Leading bytes of the formats retailCRM accepts (JPEG's start-of-image marker, PNG's whole signature).
SIGNATURES = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))
SIGNATURE_LENGTH = max(len(signature) for signature, _ in SIGNATURES)


def picture_kind(head: bytes) -> str | None:
    """The file extension of a picture retailCRM takes ('jpg', 'png') by its first bytes, or None."""
    for signature, kind in SIGNATURES:
        if head.startswith(signature):
            return kind
    return None
