"""fedkey device_sim."""
