"""fedkey server."""
