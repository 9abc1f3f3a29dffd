"""fedkey models."""
