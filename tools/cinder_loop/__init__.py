"""Cinder test volume driver for the all-in-one cloud (tools/aio)."""
