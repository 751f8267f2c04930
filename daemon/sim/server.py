"""The simulated-provider aiohttp application."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from switchman_shared.catalog import CatalogModel, load_catalog

from . import anthropic, openai
from .common import json_response
from .state import SIM_STATE, SimState

log = logging.getLogger(__name__)

_CREATED = 1767225600  # fixed "created" stamp keeps /v1/models deterministic


def sim_models() -> dict[str, CatalogModel]:
    """Every catalog model with a `sim` profile, by id (aliases excluded)."""
    return {m.id: m for m in load_catalog().values() if m.sim is not None}


async def list_models(request: web.Request) -> web.Response:
    # A superset of OpenAI's list shape and Anthropic's (type/display_name,
    # has_more/first_id/last_id) so both official SDKs parse it.
    models = request.app[SIM_STATE].models
    data = [
        {
            "id": m.id,
            "object": "model",
            "created": _CREATED,
            "owned_by": m.family,
            "type": "model",
            "display_name": m.display_name or m.id,
            "created_at": "2026-01-01T00:00:00Z",
        }
        for m in models.values()
    ]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    body = {"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": last}
    return json_response(body)


@web.middleware
async def _never_crash(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Safety net: an unforeseen input bug still answers in the provider's shape."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("sim: unexpected error on %s", request.path)
        if request.path.startswith("/v1/messages"):
            return anthropic.error_response(500)
        return openai.error_response(500)


def create_sim_app(
    models: dict[str, CatalogModel] | None = None,
    *,
    time_scale: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the simulated Anthropic/OpenAI provider app.

    `time_scale` multiplies every pacing delay (0 disables sleeping);
    `clock` drives cache TTLs so tests can advance time.
    """
    if models is None:
        models = sim_models()
    # Agent turns can be large; the default 1 MiB body limit is too small.
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_never_crash])
    app[SIM_STATE] = SimState(models=dict(models), time_scale=time_scale, clock=clock)
    app.router.add_post("/v1/messages", anthropic.messages)
    app.router.add_post("/v1/messages/count_tokens", anthropic.count_tokens)
    app.router.add_post("/v1/chat/completions", openai.chat_completions)
    app.router.add_post("/v1/responses", openai.responses)
    app.router.add_get("/v1/models", list_models)
    return app
