"""The steps ``deploy/prefect.yaml`` runs: one when deploying, one where each flow run starts.

``schedule_timezone`` (a build step, run by ``prefect deploy``) names the timezone the schedules
run in: ``SAM2CT_TIMEZONE``, else UTC with a warning that says so. ``code_directory`` (the pull
step, run by the worker for each flow run) enters the folder holding the flows' code, wherever
the worker's Python imports them from: a checkout (``pip install -e .``), the images' install,
or ``SAM2CT_CODE_DIR``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from prefect.deployments.steps import set_working_directory
from pydantic import ValidationError

from flows.settings import Settings

logger = logging.getLogger(__name__)

#: the schedules' timezone when ``SAM2CT_TIMEZONE`` is not set
DEFAULT_TIMEZONE = "UTC"


def schedule_timezone() -> dict[str, str]:
    """Build step: ``{"timezone": IANA name}`` for the schedules in ``prefect.yaml``.

    Returns
    -------
    dict
        ``SAM2CT_TIMEZONE`` (checked by :class:`~flows.settings.Settings`), else
        :data:`DEFAULT_TIMEZONE`, announced once per process with a warning.

    Raises
    ------
    SystemExit
        A setting is invalid: one line naming it, and ``prefect deploy`` stops.
    """
    try:
        zone = Settings().timezone
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "SAM2CT_" + "_".join(map(str, error["loc"])).upper()
        raise SystemExit(f"{name}: {error['msg'].removeprefix('Value error, ')}") from None
    if zone is None:
        _warn_default_timezone()
        zone = DEFAULT_TIMEZONE
    return {"timezone": zone}


@functools.cache
def _warn_default_timezone() -> None:
    logger.warning("SAM2CT_TIMEZONE is not set: the schedules run in %s (nightly-harvest at "
                   "01:00 %s); set it to the PACS's IANA timezone, e.g. "
                   "SAM2CT_TIMEZONE=Europe/Amsterdam, and deploy again",
                   DEFAULT_TIMEZONE, DEFAULT_TIMEZONE)


def code_folder() -> Path:
    """The folder whose ``flows/`` holds the code being run: ``SAM2CT_CODE_DIR``, else the
    folder this package was imported from (a checkout, or the environment's site-packages)."""
    return Settings().code_dir or Path(__file__).resolve().parents[1]


def code_directory() -> dict[str, str]:
    """Pull step: enter :func:`code_folder`, where the deployments' entrypoints
    (``flows/harvest.py:nightly_harvest``...) lie.

    Returns
    -------
    dict
        ``{"directory": absolute path}``, as Prefect's ``set_working_directory`` returns.
    """
    folder = code_folder()
    if not (folder / "flows").is_dir():
        raise FileNotFoundError(f"SAM2CT_CODE_DIR {folder} holds no flows/ folder")
    return set_working_directory(str(folder))
