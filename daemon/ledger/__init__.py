"""Request ledger: one row per proxied request (tokens, cost, latency, decision)."""

from .records import RequestClose, RequestHold, RequestOpen
from .store import Ledger

__all__ = ["Ledger", "RequestClose", "RequestHold", "RequestOpen"]
