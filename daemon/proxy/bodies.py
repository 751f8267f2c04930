"""Request body reading: size limit, gzip/deflate/zstd/br decoding, JSON."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
import zstandard
from aiohttp import web

from switchman_daemon.errors import ApiError, ErrorKind


def _too_large(limit: int) -> ApiError:
    return ApiError(
        ErrorKind.request_too_large,
        f"request body exceeds the daemon's limit of {limit // (1024 * 1024)} MiB "
        "(daemon.max_body_mb)",
    )


def decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding, refusing bodies that inflate past ``limit``."""
    enc = encoding.strip().lower()
    if not enc or enc == "identity":
        return raw
    try:
        if enc in ("gzip", "x-gzip", "deflate"):
            wbits = 16 + zlib.MAX_WBITS if "gzip" in enc else zlib.MAX_WBITS
            d = zlib.decompressobj(wbits)
            out = d.decompress(raw, limit + 1)
            if len(out) > limit or d.unconsumed_tail:
                raise _too_large(limit)
            return out
        if enc == "zstd":
            # Read at most limit + 1 bytes: one-shot decompression would inflate
            # an 8 KB zstd bomb to 256 MiB before the size check.
            parts: list[bytes] = []
            size = 0
            with zstandard.ZstdDecompressor().stream_reader(raw) as reader:
                while size <= limit:
                    part = reader.read(min(1 << 20, limit + 1 - size))
                    if not part:
                        break
                    parts.append(part)
                    size += len(part)
            if size > limit:
                raise _too_large(limit)
            return b"".join(parts)
        if enc == "br":
            try:
                import brotli  # type: ignore[import-not-found]
            except ImportError:
                raise ApiError(
                    ErrorKind.invalid_request, "Content-Encoding br is not supported"
                ) from None
            out = brotli.decompress(raw)
            if len(out) > limit:
                raise _too_large(limit)
            return out
    except ApiError:
        raise
    except (zlib.error, zstandard.ZstdError, ValueError) as e:
        raise ApiError(
            ErrorKind.invalid_request, f"request body is not valid {enc} data: {e}"
        ) from None
    raise ApiError(ErrorKind.invalid_request, f"unsupported Content-Encoding {encoding!r}")


async def read_json(request: web.Request, limit: int) -> tuple[dict[str, Any], bytes]:
    """The decoded JSON object and its raw bytes (after decompression)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    raw = decode(raw, request.headers.get("content-encoding", ""), limit)
    if not raw:
        raise ApiError(ErrorKind.invalid_request, "request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(ErrorKind.invalid_request, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(ErrorKind.invalid_request, "request body must be a JSON object")
    return body, raw
