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

``no_telemetry=True`` also turns off each agent's phone-home settings (update
checks, analytics, error reports; the list in AGENT-CLIENTS.md). ``undo(...)``
puts the newest backup back; a file that did not exist before is recorded by an
empty ``.absent`` marker so undo removes it. ``target_url(...)`` says where an
agent's settings point today (``switchman doctor``).
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

# Phone-home settings per agent (AGENT-CLIENTS.md); the flags each agent documents.
CLAUDE_CODE_NO_TELEMETRY = {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
                            "DISABLE_ERROR_REPORTING": "1"}
AIDER_NO_TELEMETRY = {"check-update": "false", "show-release-notes": "false",
                      "analytics-disable": "true",
                      # litellm's import-time price-map fetch (raw.githubusercontent.com)
                      "set-env": "LITELLM_LOCAL_MODEL_COST_MAP=True"}


def claude_code_plan(home: Path, proxy_url: str, api_key: str,
                     no_telemetry: bool = False) -> Plan:
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
    if no_telemetry:
        env.update(CLAUDE_CODE_NO_TELEMETRY)
    data["env"] = env
    new = json.dumps(data, indent=2) + "\n"
    return Plan("claude-code", path, old, new,
                "Claude Code reads the env block of this file at start: restart open "
                "sessions.")


def codex_home(home: Path, environ: dict[str, str] | None = None) -> Path:
    raw = (environ if environ is not None else os.environ).get("CODEX_HOME")
    return Path(raw) if raw else home / ".codex"


def codex_plan(home: Path, proxy_url: str, api_key: str,
               environ: dict[str, str] | None = None, no_telemetry: bool = False) -> Plan:
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
    if no_telemetry:
        # update check; analytics (ab.chatgpt.com); plugin/skill sync (github, chatgpt.com)
        data["check_for_update_on_startup"] = False
        for table, key in (("analytics", "enabled"), ("features", "plugins")):
            section = data.get(table)
            section = dict(section) if isinstance(section, dict) else {}
            section[key] = False
            data[table] = section
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


def aider_plan(home: Path, proxy_url: str, api_key: str, no_telemetry: bool = False) -> Plan:
    path = home / ".aider.conf.yml"
    old = _read(path)
    values = {"openai-api-base": v1(proxy_url), "openai-api-key": api_key}
    notes = ("Run aider with an OpenAI-style model name, e.g. "
             "`aider --model openai/gpt-4o`; the router picks the real model.")
    keep: frozenset[str] = frozenset()
    if no_telemetry:
        values.update(AIDER_NO_TELEMETRY)
        # set-env may be a multi-line YAML list already: never rewrite it
        keep = frozenset({"set-env"})
        notes += (" Aider still fetches its model price list at start unless "
                  "~/.aider/caches/model_prices_and_context_window.json holds a copy of "
                  "litellm's bundled model_prices_and_context_window_backup.json.")
    new = _upsert_lines(old, values, ": ", keep_existing=keep)
    return Plan("aider", path, old, new, notes)


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
         sdk_dir: Path | None = None, environ: dict[str, str] | None = None,
         no_telemetry: bool = False) -> Plan:
    """The settings change that points ``agent`` at the daemon at ``proxy_url``
    (and, with ``no_telemetry``, turns off the agent's phone-home settings)."""
    api_key = api_key or LOCAL_KEY
    if agent == "claude-code":
        return claude_code_plan(home, proxy_url, api_key, no_telemetry)
    if agent == "codex":
        return codex_plan(home, proxy_url, api_key, environ, no_telemetry)
    if agent == "aider":
        return aider_plan(home, proxy_url, api_key, no_telemetry)
    if agent == "sdk":
        return sdk_plan(sdk_dir or home, proxy_url, api_key)
    raise ValueError(f"unknown agent {agent!r}; one of {', '.join(AGENTS)}")


# -- writing ----------------------------------------------------------------------------

BACKUP_TAG = ".switchman-backup-"
ABSENT = ".absent"  # suffix of the marker for "there was no file before"
_BACKUP_RE = re.compile(r"\.switchman-backup-(\d{8}-\d{6})(?:-(\d+))?(\.absent)?$")


def backup_path(path: Path, now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    candidate = path.with_name(f"{path.name}{BACKUP_TAG}{stamp}")
    n = 1
    while candidate.exists() or candidate.with_name(candidate.name + ABSENT).exists():
        n += 1
        candidate = path.with_name(f"{path.name}{BACKUP_TAG}{stamp}-{n}")
    return candidate


def backups(path: Path) -> list[Path]:
    """Switchman's backups of ``path`` (``.absent`` markers included), oldest first.
    Ordered by the name's stamp and counter: copy2 keeps the original's mtime."""
    found: list[tuple[str, int, Path]] = []
    prefix = path.name + BACKUP_TAG
    if path.parent.is_dir():
        for f in path.parent.iterdir():
            m = _BACKUP_RE.search(f.name)
            if m and f.name.startswith(prefix) and f.name[:m.start()] == path.name:
                found.append((m.group(1), int(m.group(2) or 1), f))
    return [f for _, _, f in sorted(found)]


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
    else:
        # so that undo knows to remove the file rather than keep our settings
        marker = backup_path(p.path, now)
        marker.with_name(marker.name + ABSENT).touch()
    tmp = p.path.with_name(p.path.name + ".switchman-tmp")
    tmp.write_text(p.new, "utf-8")
    if p.old is not None:
        shutil.copymode(p.path, tmp)
    os.replace(tmp, p.path)
    return backup


@dataclass(frozen=True, slots=True)
class Undo:
    path: Path
    backup: Path  # the backup (or .absent marker) that was used, now removed
    removed: bool  # the file did not exist before setup, so it was deleted


def settings_path(agent: str, *, home: Path, sdk_dir: Path | None = None,
                  environ: dict[str, str] | None = None) -> Path:
    """The file ``plan`` writes for ``agent``."""
    if agent == "claude-code":
        return home / ".claude" / "settings.json"
    if agent == "codex":
        return codex_home(home, environ) / "config.toml"
    if agent == "aider":
        return home / ".aider.conf.yml"
    if agent == "sdk":
        return (sdk_dir or home) / ".env"
    raise ValueError(f"unknown agent {agent!r}; one of {', '.join(AGENTS)}")


def undo(agent: str, *, home: Path, sdk_dir: Path | None = None,
         environ: dict[str, str] | None = None) -> Undo:
    """Restore the newest backup of ``agent``'s settings file (byte for byte) and
    drop that backup, so repeated undos step further back."""
    path = settings_path(agent, home=home, sdk_dir=sdk_dir, environ=environ)
    found = backups(path)
    if not found:
        raise SetupError(f"no switchman backup of {path} to restore")
    latest = found[-1]
    if latest.name.endswith(ABSENT):
        path.unlink(missing_ok=True)
        latest.unlink()
        return Undo(path, latest, removed=True)
    tmp = path.with_name(path.name + ".switchman-tmp")
    shutil.copy2(latest, tmp)
    os.replace(tmp, path)
    latest.unlink()
    return Undo(path, latest, removed=False)


def _base(url: str) -> str:
    url = url.strip().strip("\"'").rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def target_url(agent: str, *, home: Path, sdk_dir: Path | None = None,
               environ: dict[str, str] | None = None) -> str | None:
    """The router base URL (no ``/v1``) ``agent``'s settings file points at, or
    None when the file is missing or sets none. Never raises on a bad file."""
    path = settings_path(agent, home=home, sdk_dir=sdk_dir, environ=environ)
    text = _read(path)
    if not text:
        return None
    try:
        if agent == "claude-code":
            env = json.loads(text).get("env") or {}
            url = env.get("ANTHROPIC_BASE_URL")
        elif agent == "codex":
            data = tomllib.loads(text)
            entry = (data.get("model_providers") or {}).get(data.get("model_provider", ""))
            url = entry.get("base_url") if isinstance(entry, dict) else None
        else:
            key = "openai-api-base" if agent == "aider" else "OPENAI_BASE_URL"
            sep = ":" if agent == "aider" else "="
            url = None
            for line in text.splitlines():
                m = re.match(r"^\s*(?:export\s+)?" + re.escape(key) + r"\s*" + sep + r"(.*)$",
                             line)
                if m:
                    url = m.group(1).strip()
    except (ValueError, AttributeError, tomllib.TOMLDecodeError):
        return None
    return _base(url) if isinstance(url, str) and url.strip() else None


def env_snippet(agent: str, proxy_url: str, api_key: str = LOCAL_KEY,
                no_telemetry: bool = False) -> str:
    """The same settings as shell lines, for users who prefer to set them by hand."""
    base = proxy_url.rstrip("/")
    if agent == "claude-code":
        quiet = "".join(f"export {k}={v}\n" for k, v in CLAUDE_CODE_NO_TELEMETRY.items())
        return (f"export ANTHROPIC_BASE_URL={base}\nexport ANTHROPIC_AUTH_TOKEN={api_key}\n"
                "export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1\n"
                + (quiet if no_telemetry else "") + "claude")
    if agent == "codex":
        line = f"codex -c model_provider={PROVIDER_ID}  # after writing config.toml"
        if api_key != LOCAL_KEY:
            line = f"export SWITCHMAN_API_KEY={api_key}\n" + line
        return line
    if agent == "aider":
        flags = (" --no-check-update --no-show-release-notes --analytics-disable"
                 if no_telemetry else "")
        quiet = "export LITELLM_LOCAL_MODEL_COST_MAP=True\n" if no_telemetry else ""
        return (f"export OPENAI_API_BASE={v1(base)}\nexport OPENAI_API_KEY={api_key}\n"
                f"{quiet}aider --model openai/gpt-4o{flags}")
    return (f"export OPENAI_BASE_URL={v1(base)}\nexport ANTHROPIC_BASE_URL={base}\n"
            f"export OPENAI_API_KEY={api_key} ANTHROPIC_API_KEY={api_key}")
