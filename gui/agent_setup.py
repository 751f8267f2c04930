"""Moved to ``switchman_shared.agent_setup`` (the CLI uses it too); kept for old imports."""

from switchman_shared.agent_setup import *  # noqa: F403
