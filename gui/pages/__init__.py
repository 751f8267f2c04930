"""The console's pages, one module each, in navigation order."""
