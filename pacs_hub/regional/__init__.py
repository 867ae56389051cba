"""Regional interconnection: establishments and their DICOM nodes."""
