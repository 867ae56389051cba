"""Storage: immutable checksummed blobs and the patient/study/series/instance index."""
