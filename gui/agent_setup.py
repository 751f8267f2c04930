"""Point coding agents at the daemon: the exact settings per agent, and where
each agent reads them. Pure functions over paths (no Qt, no daemon), so the CLI
can use them too and tests run them against temporary directories.

``plan(agent, home=..., proxy_url=..., api_key=...)`` reads the agent's current
settings file and returns the new content; ``apply(plan)`` writes it, after a
timestamped backup of what was there. Other settings in the file are kept.

Settings (see AGENT-CLIENTS.md for what each client was observed to send):
- Claude Code: ``~/.claude/settings.json`` ``env``: ANTHROPIC_BASE_URL (no /v1),
  ANTHROPIC_AUTH_TOKEN (sent as a bearer token; no custom-key prompt in the TUI),
  CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1.
- Codex CLI: ``$CODEX_HOME/config.toml`` (default ``~/.codex``): model_provider
  "switchman" with base_url ``.../v1`` and wire_api = "responses" (Codex speaks
  only the Responses API).
- Aider: ``~/.aider.conf.yml``: openai-api-base ``.../v1`` and openai-api-key.
- SDK apps: a ``.env`` file: OPENAI_BASE_URL / OPENAI_API_BASE (``.../v1``) and
  ANTHROPIC_BASE_URL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

AGENTS: dict[str, str] = {
    "claude-code": "Claude Code",
    "codex": "Codex CLI",
    "aider": "Aider",
    "sdk": "SDK apps (.env)",
}
LOCAL_KEY = "switchman-local"  # any key works while the daemon is local-open
PROVIDER_ID = "switchman"


class SetupError(ValueError):
    """The agent's settings file exists but cannot be read safely."""


@dataclass(frozen=True, slots=True)
class Plan:
    agent: str
    path: Path
    old: str | None  # the file's current text; None if it does not exist
    new: str  # the text to write
    notes: str  # what else the user has to know (env vars, flags)

    @property
    def up_to_date(self) -> bool:
        return self.old == self.new


def v1(proxy_url: str) -> str:
    return proxy_url.rstrip("/") + "/v1"


def _read(path: Path) -> str | None:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        return None


# -- per agent --------------------------------------------------------------------------

def claude_code_plan(home: Path, proxy_url: str, api_key: str) -> Plan:
    path = home / ".claude" / "settings.json"
    old = _read(path)
    try:
        data = json.loads(old) if old and old.strip() else {}
    except ValueError as e:
        raise SetupError(f"{path} is not valid JSON ({e}); fix or move it first") from None
    if not isinstance(data, dict):
        raise SetupError(f"{path} does not hold a JSON object")
    env = data.get("env")
    env = dict(env) if isinstance(env, dict) else {}
    env.update({"ANTHROPIC_BASE_URL": proxy_url.rstrip("/"), "ANTHROPIC_AUTH_TOKEN": api_key,
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"})
    data["env"] = env
    new = json.dumps(data, indent=2) + "\n"
    return Plan("claude-code", path, old, new,
                "Claude Code reads the env block of this file at start: restart open "
                "sessions.")


def codex_home(home: Path, environ: dict[str, str] | None = None) -> Path:
    raw = (environ if environ is not None else os.environ).get("CODEX_HOME")
    return Path(raw) if raw else home / ".codex"


def codex_plan(home: Path, proxy_url: str, api_key: str,
               environ: dict[str, str] | None = None) -> Plan:
    path = codex_home(home, environ) / "config.toml"
    old = _read(path)
    try:
        data = tomllib.loads(old) if old else {}
    except tomllib.TOMLDecodeError as e:
        raise SetupError(f"{path} is not valid TOML ({e}); fix or move it first") from None
    data["model_provider"] = PROVIDER_ID
    data.setdefault("model", "gpt-5.5")
    providers = data.get("model_providers")
    providers = dict(providers) if isinstance(providers, dict) else {}
    entry: dict[str, object] = {"name": "Switchman (local router)",
                                "base_url": v1(proxy_url), "wire_api": "responses"}
    notes = "Codex speaks only the Responses API (wire_api = \"responses\")."
    if api_key and api_key != LOCAL_KEY:
        entry["env_key"] = "SWITCHMAN_API_KEY"
        notes += " Set SWITCHMAN_API_KEY to your team key in the shell that runs codex."
    providers[PROVIDER_ID] = entry
    data["model_providers"] = providers
    return Plan("codex", path, old, tomli_w.dumps(data), notes)


def _upsert_lines(old: str | None, values: dict[str, str], sep: str,
                  keep_existing: frozenset[str] = frozenset()) -> str:
    """Set ``key<sep>value`` lines in a flat key/value file, keeping everything else.
    Keys in ``keep_existing`` are only added when absent."""
    lines = (old or "").splitlines()
    seen: set[str] = set()
    out = []
    for line in lines:
        m = re.match(r"^\s*(?:export\s+)?([A-Za-z0-9_.-]+)\s*" + re.escape(sep.strip()), line)
        key = m.group(1) if m else None
        if key in values and key not in seen:
            seen.add(key)
            out.append(line if key in keep_existing else f"{key}{sep}{values[key]}")
        elif key in values:
            continue  # a duplicate of a key we set: drop it
        else:
            out.append(line)
    out += [f"{k}{sep}{v}" for k, v in values.items() if k not in seen]
    return "\n".join(out) + "\n"


def aider_plan(home: Path, proxy_url: str, api_key: str) -> Plan:
    path = home / ".aider.conf.yml"
    old = _read(path)
    new = _upsert_lines(old, {"openai-api-base": v1(proxy_url), "openai-api-key": api_key},
                        ": ")
    return Plan("aider", path, old, new,
                "Run aider with an OpenAI-style model name, e.g. "
                "`aider --model openai/gpt-4o`; the router picks the real model.")


def sdk_plan(directory: Path, proxy_url: str, api_key: str) -> Plan:
    path = directory / ".env"
    old = _read(path)
    keep = frozenset() if api_key != LOCAL_KEY else frozenset({"OPENAI_API_KEY",
                                                               "ANTHROPIC_API_KEY"})
    new = _upsert_lines(old, {"OPENAI_BASE_URL": v1(proxy_url), "OPENAI_API_BASE": v1(proxy_url),
                              "ANTHROPIC_BASE_URL": proxy_url.rstrip("/"),
                              "OPENAI_API_KEY": api_key, "ANTHROPIC_API_KEY": api_key},
                        "=", keep_existing=keep)
    return Plan("sdk", path, old, new,
                "The OpenAI and Anthropic SDKs read these variables; load the file with "
                "python-dotenv or `set -a; . ./.env`. Or pass base_url= in code: "
                f"OpenAI(base_url=\"{v1(proxy_url)}\"), "
                f"Anthropic(base_url=\"{proxy_url.rstrip('/')}\").")


def plan(agent: str, *, home: Path, proxy_url: str, api_key: str = LOCAL_KEY,
         sdk_dir: Path | None = None, environ: dict[str, str] | None = None) -> Plan:
    """The settings change that points ``agent`` at the daemon at ``proxy_url``."""
    api_key = api_key or LOCAL_KEY
    if agent == "claude-code":
        return claude_code_plan(home, proxy_url, api_key)
    if agent == "codex":
        return codex_plan(home, proxy_url, api_key, environ)
    if agent == "aider":
        return aider_plan(home, proxy_url, api_key)
    if agent == "sdk":
        return sdk_plan(sdk_dir or home, proxy_url, api_key)
    raise ValueError(f"unknown agent {agent!r}; one of {', '.join(AGENTS)}")


# -- writing ----------------------------------------------------------------------------

def backup_path(path: Path, now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    candidate = path.with_name(f"{path.name}.switchman-backup-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.switchman-backup-{stamp}-{n}")
    return candidate


def apply(p: Plan, now: float | None = None) -> Path | None:
    """Write ``p.new`` to ``p.path`` (atomically). If a file was there, it is first
    copied to a timestamped backup, whose path is returned. Nothing is written when
    the file already holds exactly the new settings."""
    if p.up_to_date:
        return None
    current = _read(p.path)
    if current != p.old:
        raise SetupError(f"{p.path} changed since it was read; plan again")
    p.path.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if p.old is not None:
        backup = backup_path(p.path, now)
        shutil.copy2(p.path, backup)
    tmp = p.path.with_name(p.path.name + ".switchman-tmp")
    tmp.write_text(p.new, "utf-8")
    if p.old is not None:
        shutil.copymode(p.path, tmp)
    os.replace(tmp, p.path)
    return backup


def env_snippet(agent: str, proxy_url: str, api_key: str = LOCAL_KEY) -> str:
    """The same settings as shell lines, for users who prefer to set them by hand."""
    base = proxy_url.rstrip("/")
    if agent == "claude-code":
        return (f"export ANTHROPIC_BASE_URL={base}\nexport ANTHROPIC_AUTH_TOKEN={api_key}\n"
                "export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1\nclaude")
    if agent == "codex":
        return f"codex -c model_provider={PROVIDER_ID}  # after writing config.toml"
    if agent == "aider":
        return (f"export OPENAI_API_BASE={v1(base)}\nexport OPENAI_API_KEY={api_key}\n"
                "aider --model openai/gpt-4o")
    return (f"export OPENAI_BASE_URL={v1(base)}\nexport ANTHROPIC_BASE_URL={base}\n"
            f"export OPENAI_API_KEY={api_key} ANTHROPIC_API_KEY={api_key}")
