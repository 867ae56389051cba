"""The archive over time: integrity checks and the index rebuilt from the blobs
(ARCHITECTURE.md invariant 5); later retention, legal hold and tiers."""
