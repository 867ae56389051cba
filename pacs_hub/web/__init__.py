"""The HTTP side of the hub (FastAPI): health, and later DICOMweb, admin, viewer."""
