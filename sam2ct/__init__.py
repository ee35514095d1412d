"""Promptable 3D CT lesion segmentation: SAM2CT (on the `sam2` library) and a classical fallback.

Takes arrays + spacing + prompts in voxel space; knows nothing of DICOM, Prefect or SQL.
"""

from sam2ct.prompts import Prompt, PromptKind

__all__ = ["Prompt", "PromptKind"]
