"""The DICOM gateway: pynetdicom SCP handlers and SCU clients (PS3.7, PS3.4)."""
