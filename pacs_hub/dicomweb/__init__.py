"""DICOMweb services of PS3.18 (QIDO-RS, WADO-RS, STOW-RS), mounted under ``/dicom-web``."""
