"""Celery workers of the hub: post-processing jobs (cpu, gpu queues) and transfers (io)."""
