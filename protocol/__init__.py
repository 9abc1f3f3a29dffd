"""fedkey protocol."""
