"""PACS Hub: a regional cloud PACS and medical-imaging exchange."""

__version__ = "0.1.0"
