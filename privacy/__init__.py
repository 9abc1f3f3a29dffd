"""fedkey privacy."""
