"""Remote-consultation conferencing: rooms, layouts and the selective-forwarding media core."""

__version__ = "0.1.0"
