"""Bundled scripted errands."""
