"""Provider keys: read from the OS keyring, with an environment fallback.

A provider's ``key`` reference in the config says where its key lives:
``keyring:<name>`` (service "switchman", username <name>) or ``env:<VAR>``.
Keys are never logged, stored in the database or put in error messages; code
outside this module sees them only as the value it sends upstream.
"""

from __future__ import annotations

import hashlib
import logging
import os

import keyring
import keyring.errors

log = logging.getLogger("switchman.secrets")

SERVICE = "switchman"

# Bumped on every store/remove so callers that cache resolved keys (the data
# plane must not hit the keyring per request) know to look again.
generation = 0


class SecretError(Exception):
    """A key could not be read or stored. The message never contains the key."""


def resolve(ref: str) -> str | None:
    """The key a reference points at, or None if it is unset."""
    if not ref:
        return None
    scheme, _, name = ref.partition(":")
    if scheme == "env":
        return os.environ.get(name) or None
    if scheme == "keyring":
        try:
            value = keyring.get_password(SERVICE, name)
        except keyring.errors.KeyringError as e:
            # Headless Linux without a Secret Service: fall back to the env var
            # SWITCHMAN_KEY_<NAME> (documented in the README).
            log.warning("keyring unavailable (%s); trying env fallback", type(e).__name__)
            value = None
        if value:
            return value
        return os.environ.get(env_fallback_name(name)) or None
    raise SecretError(f"unknown key reference scheme {scheme!r} (use keyring: or env:)")


def env_fallback_name(name: str) -> str:
    return "SWITCHMAN_KEY_" + "".join(c if c.isalnum() else "_" for c in name).upper()


def store(name: str, value: str) -> None:
    """Store a key in the OS keyring under ``name``."""
    global generation
    generation += 1
    try:
        keyring.set_password(SERVICE, name, value)
    except keyring.errors.KeyringError as e:
        raise SecretError(
            f"no usable OS keyring ({type(e).__name__}); install a Secret Service "
            f"(e.g. gnome-keyring) or set {env_fallback_name(name)} in the daemon's environment"
        ) from None


def remove(name: str) -> None:
    global generation
    generation += 1
    try:
        keyring.delete_password(SERVICE, name)
    except keyring.errors.PasswordDeleteError:
        pass
    except keyring.errors.KeyringError as e:
        raise SecretError(f"no usable OS keyring ({type(e).__name__})") from None


def mask(value: str) -> str:
    """A display form that identifies a key without revealing it."""
    if len(value) <= 8:
        return "•" * len(value)
    return f"{value[:3]}…{value[-4:]}"


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]
