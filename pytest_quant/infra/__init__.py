"""Shared ground: the content-keyed store, hardware and machine facts, errors, progress, library versions."""
