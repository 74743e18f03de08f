"""REED core."""
