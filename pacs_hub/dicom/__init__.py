"""DICOM helpers: Part 10 files, typed header records, attribute matching, charsets."""
