"""A fake LLM provider for the proxy benchmark (aiohttp, loopback only).

POST /v1/chat/completions (OpenAI) and POST /v1/messages (Anthropic):
- no ``"stream":true`` in the body: a small JSON answer with realistic usage
  (cached tokens included);
- streaming: 50 content chunks as SSE, back to back;
- streaming with the ``bench-paced`` marker anywhere in the body: 20 ms before the
  first chunk, then 50 chunks 2 ms apart (a provider's real pacing).

The body is scanned for markers as bytes, never parsed, so the upstream's CPU
(shared with the load generator) stays small. Responses are prebuilt.

Run: python fake_upstream.py [--port 0]; prints ``READY <port>`` when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson
from aiohttp import web

N_CHUNKS = 50
PACED_FIRST_S = 0.020
PACED_GAP_S = 0.002
PACED = b"bench-paced"
CREATED = 1_767_000_000

OPENAI_USAGE = {
    "prompt_tokens": 31_250, "completion_tokens": 412, "total_tokens": 31_662,
    "prompt_tokens_details": {"cached_tokens": 29_696, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0,
                                  "accepted_prediction_tokens": 0,
                                  "rejected_prediction_tokens": 0},
}
ANTHROPIC_USAGE = {
    "input_tokens": 1_520, "cache_creation_input_tokens": 2_048,
    "cache_read_input_tokens": 28_672,
    "cache_creation": {"ephemeral_5m_input_tokens": 2_048, "ephemeral_1h_input_tokens": 0},
    "output_tokens": 412, "service_tier": "standard",
}


def _sse(obj: object, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def _openai() -> tuple[bytes, list[bytes], bytes]:
    whole = orjson.dumps({
        "id": "chatcmpl-bench0001", "object": "chat.completion", "created": CREATED,
        "model": "bench-upstream-model", "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant",
                                             "content": "Hello! How can I help you today?",
                                             "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": OPENAI_USAGE, "service_tier": "default",
    })
    base = {"id": "chatcmpl-bench0001", "object": "chat.completion.chunk", "created": CREATED,
            "model": "bench-upstream-model", "system_fingerprint": "fp_bench",
            "service_tier": "default"}
    chunks = []
    for i in range(N_CHUNKS):
        delta: dict = {"content": f" token{i}"}
        if i == 0:
            delta = {"role": "assistant", "content": "", "refusal": None}
        fin = "stop" if i == N_CHUNKS - 1 else None
        if fin:
            delta = {}
        chunks.append(_sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                  "finish_reason": fin}], "usage": None}))
    usage_chunk = _sse({**base, "choices": [], "usage": OPENAI_USAGE})
    return whole, chunks, usage_chunk


def _anthropic() -> tuple[bytes, list[bytes], bytes]:
    msg = {"id": "msg_01Bench0000000000000001", "type": "message", "role": "assistant",
           "model": "bench-upstream-model"}
    whole = orjson.dumps({**msg, "content": [{"type": "text", "text": "Hello! How can I help?"}],
                          "stop_reason": "end_turn", "stop_sequence": None,
                          "usage": ANTHROPIC_USAGE})
    start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
    chunks = [
        _sse({"type": "message_start", "message": {**msg, "content": [], "stop_reason": None,
                                                   "stop_sequence": None,
                                                   "usage": start_usage}}, "message_start"),
        _sse({"type": "content_block_start", "index": 0,
              "content_block": {"type": "text", "text": ""}}, "content_block_start"),
    ]
    # 50 chunks in all: start, block start, deltas, block stop, message delta + stop
    for i in range(N_CHUNKS - 4):
        chunks.append(_sse({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": f" token{i}"}},
                           "content_block_delta"))
    chunks.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    chunks.append(_sse({"type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": 412}}, "message_delta")
                  + _sse({"type": "message_stop"}, "message_stop"))
    return whole, chunks, b""


OA_WHOLE, OA_CHUNKS, OA_USAGE_CHUNK = _openai()
AN_WHOLE, AN_CHUNKS, _ = _anthropic()
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


async def _stream(request: web.Request, chunks: list[bytes], paced: bool) -> web.StreamResponse:
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    if paced:
        await asyncio.sleep(PACED_FIRST_S)
        for c in chunks:
            await resp.write(c)
            await asyncio.sleep(PACED_GAP_S)
    else:
        for c in chunks:
            await resp.write(c)
    await resp.write_eof()
    return resp


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream":true' not in body:
        return web.Response(body=OA_WHOLE, content_type="application/json")
    chunks = list(OA_CHUNKS)
    if b'"include_usage":true' in body:
        chunks.append(OA_USAGE_CHUNK)
    chunks[-1] = chunks[-1] + DONE
    return await _stream(request, chunks, PACED in body)


async def messages(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream":true' not in body:
        return web.Response(body=AN_WHOLE, content_type="application/json")
    return await _stream(request, AN_CHUNKS, PACED in body)


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/messages", messages)
    return app


async def _main(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    try:
        asyncio.run(_main(ap.parse_args().port))
    except KeyboardInterrupt:
        sys.exit(0)
