"""One internal view of a chat request/response, shared by the three wire formats.

Each wire format (Anthropic Messages, OpenAI Chat Completions, OpenAI Responses)
has a codec module that parses client bodies into these types and builds upstream
bodies from them, and back for responses and streaming events. Translation is
always ``format A -> IR -> format B``; same-format traffic never goes through here
(it is passed through with only the model changed).

Usage semantics follow Anthropic's: ``input_tokens`` counts only input that was
neither read from nor written to the cache, so the four input counters add up to
the prompt size. OpenAI encoders add them back up (``prompt_tokens`` includes
``cached_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant", "system"]
StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn", "error"
]


@dataclass(slots=True)
class CacheMark:
    """An Anthropic ``cache_control`` breakpoint on the block that carries it."""

    ttl: Literal["5m", "1h"] = "5m"


@dataclass(slots=True)
class TextPart:
    text: str
    cache: CacheMark | None = None
    type: Literal["text"] = "text"


@dataclass(slots=True)
class ImagePart:
    """An image given inline (``data`` base64 + ``media_type``) or by ``url``."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    cache: CacheMark | None = None
    type: Literal["image"] = "image"


@dataclass(slots=True)
class ToolUsePart:
    """A tool call made by the assistant.

    ``kind="function"``: ``input`` is a JSON object (dict).
    ``kind="custom"``: a Responses freeform tool (e.g. Codex's apply_patch); ``input``
    is the raw string. Translating a custom call to a format without custom tools
    wraps it as ``{"input": "<string>"}`` and unwraps on the way back.
    """

    id: str
    name: str
    input: dict[str, Any] | str = field(default_factory=dict)
    kind: Literal["function", "custom"] = "function"
    cache: CacheMark | None = None
    type: Literal["tool_use"] = "tool_use"


@dataclass(slots=True)
class ToolResultPart:
    """The result of a tool call, sent back by the client in a user turn."""

    tool_use_id: str
    content: list[TextPart | ImagePart] = field(default_factory=list)
    is_error: bool = False
    kind: Literal["function", "custom"] = "function"
    cache: CacheMark | None = None
    type: Literal["tool_result"] = "tool_result"


@dataclass(slots=True)
class ThinkingPart:
    """Model reasoning. ``signature`` (Anthropic) and ``encrypted`` (OpenAI
    ``reasoning.encrypted_content``) are opaque and only valid for the provider
    family that made them; encoders for another family drop the part."""

    text: str = ""
    signature: str | None = None
    redacted_data: str | None = None
    encrypted: str | None = None
    id: str | None = None
    origin: Literal["anthropic", "openai"] | None = None
    type: Literal["thinking"] = "thinking"


Part = TextPart | ImagePart | ToolUsePart | ToolResultPart | ThinkingPart


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part]


@dataclass(slots=True)
class Tool:
    """A tool offered to the model.

    ``kind="function"``: JSON-schema tool (``input_schema``).
    ``kind="custom"``: Responses freeform tool; ``raw`` keeps its ``format`` (grammar).
    ``kind="builtin"``: a provider-hosted tool (web_search, tool_search, Anthropic
    server tools...) kept verbatim in ``raw``; only same-family encoders emit it.
    """

    name: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    kind: Literal["function", "custom", "builtin"] = "function"
    raw: dict[str, Any] | None = None
    cache: CacheMark | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: Literal["auto", "any", "none", "tool"] = "auto"
    name: str | None = None
    parallel: bool | None = None  # None: provider default


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    system: list[TextPart] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    # Reasoning effort normalised to OpenAI's words: minimal|low|medium|high|xhigh.
    reasoning_effort: str | None = None
    # Anthropic ``thinking`` object as sent (adaptive/enabled/disabled), if any.
    thinking: dict[str, Any] | None = None
    # JSON-schema structured output: {"name":..., "schema":..., "strict":...}
    json_schema: dict[str, Any] | None = None
    # OpenAI prompt_cache_key / Anthropic metadata-derived session key.
    cache_key: str | None = None
    user: str | None = None
    # Top-level automatic cache_control (Anthropic) if the client sent one.
    auto_cache: CacheMark | None = None
    # Format-specific fields with no IR meaning, kept for same-family encoders.
    extra: dict[str, Any] = field(default_factory=dict)
    source_format: Literal["anthropic", "chat", "responses"] = "anthropic"


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0  # uncached, not written to cache
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0  # 5-minute writes (and OpenAI 5.6+ writes)
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0  # part of output_tokens, informational

    @property
    def prompt_tokens(self) -> int:
        """Whole prompt size, as OpenAI reports ``prompt_tokens``/``input_tokens``."""
        return (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
            + self.cache_write_1h_tokens
        )


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    parts: list[Part]
    stop_reason: StopReason = "end_turn"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)


# ---- streaming events -------------------------------------------------------
# Decoders turn an upstream SSE stream into this sequence:
#   MessageStart, (BlockStart, BlockDelta*, BlockStop)*, MessageEnd
# or StreamError at any point. Block indexes count from 0 in order of start.


@dataclass(slots=True)
class MessageStart:
    id: str
    model: str
    usage: Usage = field(default_factory=Usage)  # input side, if known up front


@dataclass(slots=True)
class BlockStart:
    index: int
    kind: Literal["text", "tool_use", "thinking"]
    # tool_use: id, name, tool kind ("function" | "custom")
    tool_id: str | None = None
    tool_name: str | None = None
    tool_kind: Literal["function", "custom"] = "function"
    # thinking: opaque id of the reasoning item (Responses) if any
    item_id: str | None = None


@dataclass(slots=True)
class BlockDelta:
    index: int
    # exactly one of these is set
    text: str | None = None  # text block
    json: str | None = None  # tool_use: a fragment of the arguments JSON (or custom input)
    thinking: str | None = None
    signature: str | None = None  # Anthropic thinking signature
    encrypted: str | None = None  # OpenAI reasoning encrypted_content


@dataclass(slots=True)
class BlockStop:
    index: int


@dataclass(slots=True)
class MessageEnd:
    stop_reason: StopReason
    usage: Usage  # complete usage for the whole response
    stop_sequence: str | None = None


@dataclass(slots=True)
class StreamError:
    status: int
    kind: str  # an errors.ErrorKind value
    message: str


StreamEvent = MessageStart | BlockStart | BlockDelta | BlockStop | MessageEnd | StreamError
