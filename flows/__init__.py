"""Prefect flows, the `sam2ct` command line and settings: the only layer that schedules."""
