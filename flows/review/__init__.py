"""The review page (``sam2ct review``): reviewers score each segmentation on the paper's scale.

``app`` (FastAPI, imported on demand) serves the queue, the slices and the scores; ``cases`` is
what the page and the run report show of one segmentation; ``slices`` renders its PNGs.
"""

from __future__ import annotations

#: Where ``sam2ct review`` listens unless told otherwise (loopback only).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def page_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The review page (its queue) as served by ``sam2ct review --host HOST --port PORT``."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def review_url(segmentation_id: int, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The review page of one segmentation, as served by ``sam2ct review`` with these options."""
    return f"{page_url(host, port)}segmentation/{segmentation_id}"
