"""Deployment files, flow parameters and the harvest CLI's argument checks (no Prefect server)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.cli import build_parser, main
from flows.harvest import windows
from flows.options import HarvestOptions, resolve_window, window_bounds

REPO = Path(__file__).resolve().parents[1]


def _options(**kw) -> HarvestOptions:
    base = {"pacs": "ORTHANC@127.0.0.1:4242", "catalog_url": "sqlite:///c.sqlite",
            "staging_dir": "staging", "output_dir": "seg"}
    return HarvestOptions(**{**base, **kw})


def test_prefect_yaml_names_pools_schedule_and_entrypoints():
    doc = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in doc["deployments"]}
    nightly = by_name["nightly-harvest"]
    assert nightly["schedules"][0]["cron"] == "0 1 * * *"
    # the timezone comes from the build step (SAM2CT_TIMEZONE, else UTC said out loud), and
    # each run starts where the worker's Python has flows/ (tests/test_deploy_prefect.py)
    assert doc["build"] == [{"flows.deployment.schedule_timezone": {"id": "schedule"}}]
    assert doc["pull"] == [{"flows.deployment.code_directory": {}}]
    assert all(s["timezone"] == "{{ schedule.timezone }}"
               for d in doc["deployments"] for s in d.get("schedules", []))
    for step in doc["build"] + doc["pull"]:
        module, _, name = next(iter(step)).rpartition(".")
        assert callable(getattr(__import__(module, fromlist=[name]), name)), step
    assert nightly["concurrency_limit"] == 1
    assert nightly["work_pool"]["name"] == "cpu"
    assert by_name["segment"]["work_pool"]["name"] == "gpu"
    assert by_name["backfill"]["concurrency_limit"] == 1
    entry = {d["name"]: d["entrypoint"] for d in doc["deployments"]}
    assert entry == {"nightly-harvest": "flows/harvest.py:nightly_harvest",
                     "backfill": "flows/harvest.py:backfill",
                     "reconcile": "flows/reconcile.py:reconcile",
                     "segment": "flows/segment_flow.py:segment_batch",
                     "export": "flows/export_flow.py:export_dataset"}
    for target in entry.values():  # every entrypoint names a flow that exists
        path, name = target.split(":")
        module = __import__(path.removesuffix(".py").replace("/", "."), fromlist=[name])
        assert hasattr(getattr(module, name), "fn"), f"{target} is not a Prefect flow"


def test_docker_compose_config_validates():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (Debian package docker-compose) is not installed")
    env = {**os.environ, "CATALOG_DB_PASSWORD": "test-only", "PREFECT_DB_PASSWORD": "test-only"}
    out = subprocess.run([exe, "-f", str(REPO / "deploy" / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    no_secret = {k: v for k, v in env.items() if k != "CATALOG_DB_PASSWORD"}
    missing = subprocess.run([exe, "-f", str(REPO / "deploy" / "docker-compose.yml"), "config",
                              "-q"], capture_output=True, text=True, env=no_secret, timeout=60)
    assert missing.returncode != 0  # the password must come from the environment


def test_windows_cover_range_in_order_without_overlap():
    got = windows(dt.date(2026, 1, 1), dt.date(2026, 1, 10), 4)
    assert got == [(dt.date(2026, 1, 1), dt.date(2026, 1, 4)),
                   (dt.date(2026, 1, 5), dt.date(2026, 1, 8)),
                   (dt.date(2026, 1, 9), dt.date(2026, 1, 10))]
    assert windows(dt.date(2026, 1, 1), dt.date(2026, 1, 1), 7) == [(dt.date(2026, 1, 1),) * 2]
    with pytest.raises(ValueError, match="chunk_days"):
        windows(dt.date(2026, 1, 1), dt.date(2026, 1, 2), 0)
    with pytest.raises(ValueError, match="end before start"):
        windows(dt.date(2026, 1, 2), dt.date(2026, 1, 1), 1)


def test_window_defaults_to_yesterday_and_bounds_are_half_open():
    assert resolve_window(None, None, today=dt.date(2026, 3, 1)) == (dt.date(2026, 2, 28),) * 2
    assert resolve_window(dt.date(2026, 1, 5), None) == (dt.date(2026, 1, 5),) * 2
    lo, hi = window_bounds(dt.date(2026, 1, 5), dt.date(2026, 1, 6))
    assert (hi - lo) == dt.timedelta(days=2) and lo.tzinfo is not None
    with pytest.raises(ValueError, match="end before start"):
        resolve_window(dt.date(2026, 1, 6), dt.date(2026, 1, 5))


def test_options_validate_bounds_and_pacs_address():
    opts = _options(max_associations=3)
    assert opts.pacs_settings().max_associations == 3 and opts.pacs_aet == "ORTHANC"
    with pytest.raises(ValueError, match="max_associations"):
        _options(max_associations=0)
    with pytest.raises(ValueError, match="AET@host:port"):
        _options(pacs="not-an-address")
    with pytest.raises(ValueError, match="lease_seconds"):
        _options(lease_seconds=5)


def test_options_from_settings_need_a_pacs(tmp_path):
    from flows.settings import Settings

    settings = Settings(data_dir=tmp_path, pacs=None)
    with pytest.raises(ValueError, match="SAM2CT_PACS"):
        HarvestOptions.from_settings(settings)
    opts = HarvestOptions.from_settings(settings, pacs="PACS@h:104", model="classical")
    assert opts.staging_dir == tmp_path / "staging" and opts.model == "classical"
    assert opts.segment_deployment is None  # no pool configured: segment in-process
    pooled = Settings(data_dir=tmp_path, pacs="PACS@h:104", segment_deployment="segment-batch/g")
    assert HarvestOptions.from_settings(pooled).segment_deployment == "segment-batch/g"


def test_cli_registers_harvest_and_backfill():
    args = build_parser().parse_args(["backfill", "--from", "2026-01-01", "--to", "2026-01-31",
                                      "--chunk-days", "3", "--pacs", "P@h:104"])
    assert args.command == "backfill" and args.chunk_days == 3
    assert args.start == dt.date(2026, 1, 1)
    args = build_parser().parse_args(["harvest", "--from", "2026-01-01", "--to", "2026-01-02"])
    assert args.func.__name__ == "run_harvest"


def test_cli_rejects_reversed_window_in_one_line(capsys):
    code = main(["harvest", "--from", "2026-01-05", "--to", "2026-01-01", "--pacs", "P@h:104"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "before --from" in err[0]


def test_pacs_hours_are_a_flow_option_and_cli_flag(tmp_path, capsys):
    from flows.cli.harvest import options_from

    hours = _options(pacs_hours="19:00-07:00").pacs_settings().pacs_hours
    assert (hours.start, hours.end) == (dt.time(19), dt.time(7))
    assert _options().pacs_settings().pacs_hours is None
    with pytest.raises(ValueError, match="pacs_hours"):
        _options(pacs_hours="19:00")
    args = build_parser().parse_args(["harvest", "--from", "2026-01-01", "--to", "2026-01-01",
                                      "--pacs", "P@h:104", "--pacs-hours", "22:30-05:00",
                                      "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}"])
    assert options_from(args).pacs_settings().pacs_hours.start == dt.time(22, 30)
    from flows.settings import Settings  # SAM2CT_PACS_HOURS reaches the options too

    opts = HarvestOptions.from_settings(Settings(data_dir=tmp_path, pacs_hours="19:00-07:00"),
                                        pacs="P@h:104")
    assert opts.pacs_settings().pacs_hours.end == dt.time(7)
    code = main(["harvest", "--from", "2026-01-01", "--to", "2026-01-01", "--pacs", "P@h:104",
                 "--pacs-hours", "25:00-07:00"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pacs_hours" in err[0]


def test_the_old_harvest_window_names_still_work_with_a_deprecation_note(tmp_path, caplog):
    """'Harvest window' meant the PACS's hours as well as the study dates: the hours are now
    pacs_hours; the old flag, variable and flow parameter are still accepted, with a note."""
    from flows.cli.harvest import options_from
    from flows.settings import Settings

    with caplog.at_level("WARNING"):
        old_param = _options(harvest_window="19:00-07:00")
        args = build_parser().parse_args(["harvest", "--from", "2026-01-01", "--to",
                                          "2026-01-01", "--pacs", "P@h:104",
                                          "--harvest-window", "22:30-05:00",
                                          "--catalog", f"sqlite:///{tmp_path / 'c.sqlite'}"])
        old_flag = options_from(args)
        old_env = HarvestOptions.from_settings(
            Settings(data_dir=tmp_path, harvest_window="20:00-06:00"), pacs="P@h:104")
    assert old_param.pacs_hours == "19:00-07:00" and old_flag.pacs_hours == "22:30-05:00"
    assert old_env.pacs_hours == "20:00-06:00"
    notes = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(notes) == 3 and all("pacs" in n.lower() for n in notes)


def test_every_harvest_flag_is_a_declared_option(capsys):
    """The flags are derived from HarvestOptions: each has its field's description."""
    from flows.options import CLI_FLAGS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["harvest", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, flag in CLI_FLAGS.items():
        assert flag in text
        assert HarvestOptions.model_fields[name].description.split()[0] in text, name


def test_torch_torchvision_and_sam2_are_pinned_once_in_pyproject():
    """The Makefile and both Dockerfiles install them first, by asking deploy/pins.py for
    pyproject.toml's pins; none of them writes a version of its own."""
    import importlib.metadata
    import sys

    out = subprocess.run([sys.executable, str(REPO / "deploy" / "pins.py"), "torch",
                          "torchvision", "sam2"], capture_output=True, text=True, check=True)
    pins = dict(p.split("==") for p in out.stdout.split())
    assert set(pins) == {"torch", "torchvision", "sam2"}
    for name, version in pins.items():  # what make installed is what pyproject declares
        assert importlib.metadata.version(name).split("+")[0] == version
    for path in ("Makefile", "deploy/Dockerfile.cpu", "deploy/Dockerfile.cuda"):
        text = (REPO / path).read_text()
        assert "deploy/pins.py torch torchvision" in text and "deploy/pins.py sam2" in text
        assert not any(f"{name}==" in text for name in pins), path
    bad = subprocess.run([sys.executable, str(REPO / "deploy" / "pins.py"), "tensorflow"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "tensorflow is not a dependency" in bad.stderr
    assert not list(REPO.glob("*.whl"))
