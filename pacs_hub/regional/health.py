"""Placeholder: the health background task (issue 5), filled in by its work."""
