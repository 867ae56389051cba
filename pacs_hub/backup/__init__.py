"""Backup target for hospitals: replication coverage, stand-in (PCA), restore (PRA)."""
