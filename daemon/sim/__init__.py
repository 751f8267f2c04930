"""Built-in simulated providers ("sim").

Plays the provider's truth — validation, response/stream shapes, usage and
prompt-cache accounting — for the Anthropic Messages API and the OpenAI Chat
Completions and Responses APIs.  Independent of the router by design: it
imports nothing from switchman_daemon outside this package.

Directives in the last user text steer replies deterministically:
``[[sim:tool NAME {json}]]``, ``[[sim:error STATUS]]``,
``[[sim:fail-first N STATUS]]``, ``[[sim:reply TEXT]]``, ``[[sim:slow MS]]``,
``[[sim:drop]]``.
"""

from .cache import CacheTable, CacheUsage
from .server import create_sim_app, sim_models
from .state import SIM_STATE, Fault, SimRecord, SimState

__all__ = [
    "SIM_STATE",
    "CacheTable",
    "CacheUsage",
    "Fault",
    "SimRecord",
    "SimState",
    "create_sim_app",
    "sim_models",
]
