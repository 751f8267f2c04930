"""Switchman's background daemon: the proxy data plane and (later) the admin plane."""

__version__ = "0.1.0"
