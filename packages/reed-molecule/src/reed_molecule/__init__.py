"""REED molecule."""
