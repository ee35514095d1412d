"""Everything DICOM: PACS client, CT series -> volume, GSPS -> annotations, mask -> SEG.

Knows nothing of Prefect, torch or SQL (see ../shared/docs/architecture.md).
"""
