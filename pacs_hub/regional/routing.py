"""Placeholder: routing rules and their persistent queue (issue 5), filled in by its work."""
