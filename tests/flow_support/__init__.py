"""Helpers shared by the flow tests."""
