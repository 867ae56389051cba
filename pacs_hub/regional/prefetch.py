"""Placeholder: the prefetch background task (issue 5), filled in by its work."""
