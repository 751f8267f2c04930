"""Offline training for Switchman's routing models (not imported by the daemon's
hot path; numpy is a training-only dependency)."""
