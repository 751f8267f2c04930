"""Request ledger: one row per proxied request (tokens, cost, latency, decision)."""

from .records import RequestClose, RequestOpen
from .store import Ledger

__all__ = ["Ledger", "RequestClose", "RequestOpen"]
