"""Celery workers (post-processing, transfers): to come."""
