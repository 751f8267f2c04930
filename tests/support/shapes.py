"""Request bodies and headers shaped like the real clients' (AGENT-CLIENTS.md):
Claude Code 2.1.x, Codex CLI 0.171 and Aider 0.86."""

from __future__ import annotations

import json
import uuid
from typing import Any

_TOOL_NAMES = [
    "Agent", "Bash", "CronCreate", "CronDelete", "CronList", "Edit", "EnterWorktree",
    "ExitWorktree", "NotebookEdit", "Read", "ReportFindings", "ScheduleWakeup", "SendMessage",
    "Skill", "TaskCreate", "TaskGet", "TaskList", "TaskUpdate", "WebFetch", "WebSearch",
    "Workflow", "Write", "TaskStop", "TaskOutput",
]


def _cc_tool(name: str, desc_chars: int) -> dict[str, Any]:
    desc = (f"{name}: performs the {name.lower()} operation in the workspace. " * 80)[:desc_chars]
    return {
        "name": name,
        "description": desc,
        "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "what to run"},
                "timeout": {"type": "number", "description": "milliseconds"},
                "description": {"type": "string"},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    }


def claude_code_turn(session_id: str | None = None, turns: int = 3,
                     target_kb: int = 100, agent_id: str | None = None
                     ) -> tuple[dict[str, Any], dict[str, str]]:
    """A main-loop ``/v1/messages?beta=true`` request after ``turns`` tool round trips."""
    sid = session_id or str(uuid.uuid4())
    tool_chars = max(200, (target_kb * 1024 - 12_000) // len(_TOOL_NAMES))
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.a3f; "
                                 "cc_entrypoint=sdk-cli;"
                                 + (" cc_is_subagent=true;" if agent_id else "")},
        {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "# Doing tasks\nFollow the repository conventions. " * 110,
         "cache_control": {"type": "ephemeral"}},
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>\nToday is 2026-11-28.\n</system-reminder>"},
            {"type": "text", "text": "List the files here, then read notes.txt"},
        ]},
        {"role": "system", "content": "Available agent types: Explore, Plan. Skills: none."},
    ]
    for i in range(turns):
        tid = f"toolu_{i:02d}{uuid.uuid4().hex[:20]}"
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Step {i}: running a command."},
            {"type": "tool_use", "id": tid, "name": "Bash",
             "input": {"command": f"ls -la dir{i}", "description": "list"}},
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tid,
             "content": f"file{i}.py\nnotes.txt\nREADME.md\n"},
        ]})
    messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    body = {
        "model": "claude-opus-4-8",
        "max_tokens": 64000,
        "stream": True,
        "system": system,
        "messages": messages,
        "tools": [_cc_tool(n, tool_chars) for n in _TOOL_NAMES],
        "metadata": {"user_id": json.dumps({"device_id": "ab" * 32, "account_uuid": "",
                                            "session_id": sid})},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    }
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,context-1m-2025-08-07,"
                          "interleaved-thinking-2025-05-14,context-management-2025-06-27,"
                          "prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,"
                          "effort-2025-11-24",
        "x-api-key": "cc-client-secret-key",
        "x-app": "cli",
        "user-agent": "claude-cli/2.1.197 (external, sdk-cli)",
        "x-claude-code-session-id": sid,
        "x-stainless-timeout": "600",
        "anthropic-dangerous-direct-browser-access": "true",
    }
    if agent_id:
        headers["x-claude-code-agent-id"] = agent_id
    return body, headers


def codex_turn(thread_id: str | None = None, kind: str = "turn"
               ) -> tuple[dict[str, Any], dict[str, str]]:
    """A Codex ``POST /v1/responses`` request with a tool round trip in its history."""
    tid = thread_id or str(uuid.uuid4())
    turn_md = json.dumps({"session_id": tid, "thread_id": tid, "turn_id": "turn-1",
                          "request_kind": kind, "window_number": 0, "model": "gpt-5.5"})
    inp: list[dict[str, Any]] = [
        {"type": "message", "role": "developer", "id": "msg_dev1",
         "content": [{"type": "input_text", "text": "You are Codex, a coding agent. " * 600}]},
        {"type": "message", "role": "developer", "id": "msg_dev2",
         "content": [{"type": "input_text", "text": "<permissions>workspace-write</permissions>"}]},
        {"type": "message", "role": "user", "id": "msg_env",
         "content": [{"type": "input_text",
                      "text": "<environment_context>cwd=/work</environment_context>"}]},
        {"type": "message", "role": "user", "id": "msg_u1",
         "content": [{"type": "input_text", "text": "add hello.txt"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "encrypted_content": "gAAAAA" + "q" * 200},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command",
         "arguments": json.dumps({"cmd": "ls"})},
        {"type": "function_call_output", "call_id": "call_1", "output": "README.md\n"},
        {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_2", "name": "apply_patch",
         "input": "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\n"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Success."},
    ]
    body = {
        "model": "gpt-5.5",
        "stream": True,
        "input": inp,
        "tools": [
            {"type": "function", "name": "exec_command", "description": "Run a command",
             "strict": False, "parameters": {"type": "object", "properties": {
                 "cmd": {"type": "string"}, "workdir": {"type": "string"}},
                 "required": ["cmd"]}},
            {"type": "custom", "name": "apply_patch", "description": "Apply a patch",
             "format": {"type": "grammar", "syntax": "lark",
                        "definition": "start: begin_patch hunk+ end_patch"}},
            {"type": "tool_search", "execution": "client"},
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"effort": "medium"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": tid,
        "text": {"verbosity": "low"},
        "client_metadata": {"session_id": tid, "turn_metadata": turn_md},
    }
    if kind == "compaction":
        body["tools"] = []
        body["parallel_tool_calls"] = False
        inp.append({"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "You are performing a CONTEXT CHECKPOINT COMPACTION"}]})
    headers = {
        "authorization": "Bearer codex-client-secret-key",
        "originator": "codex_exec",
        "user-agent": "codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm",
        "session-id": tid,
        "thread-id": tid,
        "x-client-request-id": tid,
        "x-codex-window-id": f"{tid}:0",
        "x-codex-turn-metadata": turn_md,
        "accept": "text/event-stream",
    }
    return body, headers


def aider_turn(stream: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    body = {
        "model": "gpt-4o",
        "stream": stream,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "Act as an expert software developer. " * 50},
            {"role": "user", "content": "hello.py\n```\ndef greet():\n    return 'hi'\n```"},
            {"role": "assistant", "content": "Ok, any changes I propose will be to those files."},
            {"role": "user", "content": "Make greet return hello."},
            {"role": "system", "content": "# SEARCH/REPLACE block Rules: ..."},
        ],
    }
    return body, {"user-agent": "OpenAI/Python 2.20.0", "authorization": "Bearer dummy-key"}
