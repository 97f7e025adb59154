"""A request body read with a size limit, the same way by every endpoint that takes JSON."""

from __future__ import annotations


def read_limited(request, limit: int) -> bytes | None:
    """The body of a Flask ``request``, or None when it is over ``limit`` bytes: a declared length over it is
    refused unread, a chunked body is read no further than one byte past it."""
    if (request.content_length or 0) > limit:
        return None
    body = request.stream.read(limit + 1)
    return None if len(body) > limit else body
