"""REED protein."""
