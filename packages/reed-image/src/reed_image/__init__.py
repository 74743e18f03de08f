"""REED image."""
