"""Request bodies for the proxy benchmark: a tiny chat request and ~120 KB
agent turns shaped like what Codex (OpenAI chat completions with function
tools) and Claude Code (Anthropic messages with tool_use/tool_result blocks and
cache_control breakpoints) send mid-session. Deterministic (fixed seed)."""

from __future__ import annotations

import random
from typing import Any

import orjson

# The upstream fake picks the paced stream when it sees this marker in a body.
PACED_MARKER = "bench-paced"

_WORDS_TEXT = (
    "self config request response model token cache stream chunk usage error retry "
    "handler session router provider ledger budget policy return await async def "
    "class import from None True False value result items index buffer parser event "
    "payload header client server upstream timeout deadline fallback decision"
)
_WORDS = _WORDS_TEXT.split(" ")

_PATHS = [
    "daemon/proxy/relay.py", "daemon/routing/router.py", "daemon/ledger/store.py",
    "daemon/protocol/chat.py", "daemon/protocol/anthropic.py", "tests/test_relay.py",
    "shared/config_schema.py", "daemon/providers/upstream.py", "README.md",
]


def _code_line(rng: random.Random) -> str:
    indent = "    " * rng.randint(0, 3)
    w = rng.sample(_WORDS, 5)
    forms = [
        f'{indent}{w[0]}_{w[1]} = {w[2]}.{w[3]}("{w[4]}")',
        f"{indent}if {w[0]} is not None and {w[1]}.{w[2]}:",
        f"{indent}return {{'{w[0]}': {w[1]}, '{w[2]}': {w[3]}_{w[4]}}}",
        f"{indent}# {w[0]} {w[1]} {w[2]} the {w[3]} before {w[4]}",
        f"{indent}async def {w[0]}_{w[1]}(self, {w[2]}: str, {w[3]}: int = 0) -> None:",
        f"{indent}for {w[0]} in self.{w[1]}_{w[2]}:",
        f'{indent}log.info("{w[0]} %s {w[1]} %d", {w[2]}, len({w[3]}))',
    ]
    return rng.choice(forms)


def _file_text(rng: random.Random, lines: int, numbered: bool) -> str:
    out = []
    for i in range(1, lines + 1):
        line = _code_line(rng)
        out.append(f"{i:6d}\t{line}" if numbered else line)
    return "\n".join(out)


def _prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


_SYSTEM_PREAMBLE = (
    "You are a coding agent running in the user's terminal. You help with software "
    "engineering tasks: fixing bugs, adding features, refactoring, explaining code. "
    "Follow the repository's conventions, keep changes minimal, run the tests, and "
    "never commit unless asked.\n\n"
)


def _system_text(rng: random.Random, kb: int) -> str:
    parts = [_SYSTEM_PREAMBLE]
    while sum(map(len, parts)) < kb * 1024:
        parts.append("# " + _prose(rng, 4) + "\n")
        parts.extend("- " + _prose(rng, rng.randint(12, 30)) + "\n" for _ in range(6))
    return "".join(parts)


def _schema(props: dict[str, str], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {k: {"type": "string", "description": v} for k, v in props.items()},
        "required": required,
        "additionalProperties": False,
    }


_TOOLS = [
    ("shell", "Run a shell command and return its output.",
     {"command": "The command to run", "workdir": "Working directory", "timeout_ms": "Timeout"},
     ["command"]),
    ("apply_patch", "Apply a unified patch to files in the workspace.",
     {"patch": "The patch text, in the apply_patch format"}, ["patch"]),
    ("read_file", "Read a file, optionally a line range.",
     {"path": "Absolute path", "offset": "First line", "limit": "Number of lines"}, ["path"]),
    ("grep", "Search file contents with a regular expression.",
     {"pattern": "Regex", "path": "Directory", "glob": "File filter"}, ["pattern"]),
    ("glob", "Find files by name pattern.", {"pattern": "Glob pattern", "path": "Root"},
     ["pattern"]),
    ("update_plan", "Record the plan and mark steps done.",
     {"plan": "Steps as JSON", "explanation": "Why the plan changed"}, ["plan"]),
    ("web_fetch", "Fetch a URL and summarise it.", {"url": "URL", "prompt": "What to extract"},
     ["url", "prompt"]),
    ("write_file", "Create or overwrite a file.", {"path": "Absolute path", "content": "Text"},
     ["path", "content"]),
]


def _tool_call(rng: random.Random, i: int) -> tuple[str, dict[str, Any], str]:
    """(tool name, arguments, tool output) for step ``i`` of the session."""
    path = rng.choice(_PATHS)
    kind = i % 4
    if kind == 0:
        return "read_file", {"path": f"/repo/{path}", "offset": 1, "limit": 120}, _file_text(
            rng, rng.randint(40, 90), numbered=True)
    if kind == 1:
        cmd = rng.choice(["pytest -q tests/test_relay.py", "ruff check .", "git diff --stat",
                          f"grep -n '{rng.choice(_WORDS)}' -r daemon/"])
        out = "\n".join(f"{rng.choice(_PATHS)}:{rng.randint(1, 400)}: {_code_line(rng).strip()}"
                        for _ in range(rng.randint(15, 40)))
        return "shell", {"command": ["bash", "-lc", cmd], "workdir": "/repo",
                         "timeout_ms": 120000}, out
    if kind == 2:
        old = _file_text(rng, 6, numbered=False)
        new = _file_text(rng, 8, numbered=False)
        patch = (f"*** Begin Patch\n*** Update File: {path}\n@@\n"
                 + "\n".join("-" + s for s in old.splitlines()) + "\n"
                 + "\n".join("+" + s for s in new.splitlines()) + "\n*** End Patch")
        return "apply_patch", {"patch": patch}, f"Success. Updated the following files:\nM {path}"
    return "grep", {"pattern": rng.choice(_WORDS) + r"\(", "path": "/repo"}, "\n".join(
        f"/repo/{rng.choice(_PATHS)}" for _ in range(rng.randint(5, 20)))


def openai_small(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in one short sentence."},
        ],
        "max_tokens": 64,
    }


def openai_agent_turn(model: str, target_bytes: int = 120_000, seed: int = 7) -> dict[str, Any]:
    """A Codex-like chat-completions turn: long instructions, function tools, and a
    history of assistant tool calls and tool results, ending in a tool result."""
    rng = random.Random(seed)
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": _system_text(rng, 12)},
            {"role": "user", "content": "<environment_context>\n  <cwd>/repo</cwd>\n  "
             "<approval_policy>on-request</approval_policy>\n  <sandbox_mode>workspace-write"
             "</sandbox_mode>\n</environment_context>"},
            {"role": "user", "content": "The relay drops the usage chunk when the client "
             "asked for it. Find the bug, fix it, and add a test."},
        ],
        "tools": [{"type": "function", "function": {"name": n, "description": d,
                                                     "parameters": _schema(p, r)}}
                  for n, d, p, r in _TOOLS],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "temperature": 1,
        "max_tokens": 32000,
    }
    msgs = body["messages"]
    i = 0
    while len(orjson.dumps(body)) < target_bytes:
        name, args, output = _tool_call(rng, i)
        call_id = f"call_{rng.getrandbits(64):016x}"
        msgs.append({"role": "assistant", "content": _prose(rng, rng.randint(8, 30)),
                     "tool_calls": [{"id": call_id, "type": "function", "function": {
                         "name": name, "arguments": orjson.dumps(args).decode()}}]})
        msgs.append({"role": "tool", "tool_call_id": call_id, "content": output})
        i += 1
    return body


def anthropic_agent_turn(model: str, target_bytes: int = 120_000,
                         seed: int = 11) -> dict[str, Any]:
    """A Claude-Code-like /v1/messages turn: system blocks with cache_control, tools
    with input_schema, tool_use/tool_result history, a cache breakpoint at the end."""
    rng = random.Random(seed)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
            {"type": "text", "text": _system_text(rng, 14),
             "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [{"name": n, "description": d, "input_schema": _schema(p, r)}
                  for n, d, p, r in _TOOLS],
        "metadata": {"user_id": "user_bench_account__session_0b7c"},
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>\nAs you answer, use the context "
             "below.\n</system-reminder>"},
            {"type": "text", "text": "The ledger export misses rows written in the last "
             "second. Find out why and fix it."},
        ]}],
    }
    msgs = body["messages"]
    i = 0
    while len(orjson.dumps(body)) < target_bytes:
        name, args, output = _tool_call(rng, i)
        tid = f"toolu_01{rng.getrandbits(80):020x}"
        msgs.append({"role": "assistant", "content": [
            {"type": "text", "text": _prose(rng, rng.randint(8, 30))},
            {"type": "tool_use", "id": tid, "name": name, "input": args},
        ]})
        msgs.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tid, "content": output},
        ]})
        i += 1
    msgs[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return body
