"""One clear line per failure (issue 19): catalogs given as paths, read-only commands that never
create a catalog, an unreachable PACS or PostgreSQL, a file that is no checkpoint, a storage port
in use, a C-MOVE the PACS cannot deliver, chatty libraries and Prefect's telemetry.

Each test runs the installed ``sam2ct`` against real peers (Orthanc on loopback, a port nobody
listens on, a real PostgreSQL, real files) and checks the exit status, that stderr is one line
(or the one INFO line named) without a traceback, and what the line tells the user to check.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import free_port
from test_cli_hardening import SAM2CT, one_error_line

from dicom_io.pacs import Backoff
from flows.cli import PREFECT_QUIET, main

pytest_plugins = ["pacs_fixtures", "flow_fixtures"]
WINDOW = ("--from", "2026-01-05", "--to", "2026-01-05")


def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed ``sam2ct`` in ``cwd`` with ``env`` added; a data folder of the test's own
    is set by the callers that need one."""
    return subprocess.run([SAM2CT, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, **(env or {})})


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()


# --- the catalog ------------------------------------------------------------------------------

def test_a_catalog_given_as_a_file_path_works(tmp_path: Path) -> None:
    (tmp_path / "demo-out").mkdir()
    created = run("db", "upgrade", "--catalog", "demo-out/catalog.sqlite", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "demo-out" / "catalog.sqlite").is_file()
    stats = run("catalog", "stats", "--catalog", "demo-out/catalog.sqlite", cwd=tmp_path)
    assert stats.returncode == 0 and stats.stderr.startswith("tables: "), stats.stderr


READ_ONLY = {
    "catalog stats": ("catalog", "stats"),
    "catalog query": ("catalog", "query", "--format", "csv"),
    "export": ("export", "--format", "nifti", "--out", "exported"),
    "reconcile": ("reconcile", *WINDOW, "--pacs", "NOBODY@127.0.0.1:9"),
}


@pytest.mark.parametrize("command", READ_ONLY)
def test_a_read_only_command_never_creates_a_catalog(command: str, tmp_path: Path) -> None:
    mistyped = tmp_path / "catalgo.sqlite"
    result = run(*READ_ONLY[command], "--catalog", str(mistyped), cwd=tmp_path)
    line = one_error_line(result)
    assert result.returncode == 2 and result.stdout == ""
    assert f"no catalog at {mistyped}: the file does not exist" in line
    assert "`sam2ct db upgrade` creates a catalog" in line and "[from --catalog]" in line
    assert not mistyped.exists() and not (tmp_path / "exported").exists()


def test_without_a_catalog_the_default_is_named_and_not_created(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items()
              if k not in ("SAM2CT_DATABASE_URL", "SAM2CT_DATA_DIR")},
           "XDG_DATA_HOME": str(tmp_path / "xdg")}
    result = subprocess.run([SAM2CT, "catalog", "stats"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=300)
    default = tmp_path / "xdg" / "sam2ct" / "catalog.sqlite"
    line = one_error_line(result)
    assert f"no catalog at {default}" in line
    assert "[the default; choose one with --catalog or SAM2CT_DATABASE_URL]" in line
    assert not (tmp_path / "xdg").exists()
    # a command that writes makes the default's folder, its own
    upgraded = subprocess.run([SAM2CT, "db", "upgrade"], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=300)
    assert upgraded.returncode == 0, upgraded.stderr
    assert default.is_file()


def test_a_read_only_command_on_an_empty_postgresql_database(pg_url: str) -> None:
    from sqlalchemy import create_engine, inspect

    result = run("catalog", "query", "--catalog", pg_url)
    line = one_error_line(result)
    assert result.returncode == 2
    assert line.endswith("holds no catalog (no sam2ct tables); `sam2ct db upgrade` creates "
                         "them [from --catalog]"), line
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        assert inspect(connection).get_table_names() == []  # nothing was created
    engine.dispose()


def test_db_upgrade_makes_no_folder_it_was_not_given(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    result = run("db", "upgrade", "--catalog", f"sqlite:///{missing / 'x.sqlite'}")
    line = one_error_line(result)
    assert result.returncode == 2
    assert f"its folder {missing} does not exist; make it first" in line
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize("argv", [("catalog", "stats"), ("db", "upgrade"),
                                  ("export", "--format", "nifti", "--out", "x")])
def test_unreachable_postgresql_is_one_line_with_a_hint(argv: tuple[str, ...],
                                                        tmp_path: Path) -> None:
    port = free_port()
    result = run(*argv, "--catalog", f"postgresql+psycopg://sam2ct@127.0.0.1:{port}/catalog",
                 cwd=tmp_path)
    line = one_error_line(result)
    assert result.returncode == 2
    assert f"catalog postgresql+psycopg://sam2ct@127.0.0.1:{port}/catalog - cannot be opened" \
           in line and "Connection refused" in line
    assert (f"check the host and port in the URL, that PostgreSQL runs on 127.0.0.1:{port} "
            "and accepts connections from this host") in line
    assert not (tmp_path / "x").exists()


# --- the PACS ---------------------------------------------------------------------------------

def test_pacs_echo_to_a_dead_port_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = run("pacs", "echo", "--pacs", f"NOBODY@127.0.0.1:{port}")
    line = one_error_line(result)
    assert result.returncode == 2
    assert line == (f"sam2ct pacs: error: PACS NOBODY@127.0.0.1:{port}: cannot connect (not "
                    "listening there); check its host and port (SAM2CT_PACS or --pacs "
                    "AET@host:port), that it runs, and that no firewall stands between us "
                    "(gave up after 2 attempts)")


class DroppingPeer:
    """A PACS that accepts each connection and closes it at once, as one does for a host not
    on its allowlist; it counts the connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


#: What a harvest's error line says of a PACS nobody listens for, and of one that drops us.
HARVEST_LINES = {
    "dead port": "cannot connect (not listening there); check its host and port (SAM2CT_PACS "
                 "or --pacs AET@host:port), that it runs, and that no firewall stands between "
                 "us",
    "drops us": "association not established (aborted, ACSE timeout or no acceptable "
                "presentation context); ask the PACS administrator whether our AE title SAM2CT "
                "on this host is on its list of DICOM modalities",
}


@pytest.mark.slow
@pytest.mark.parametrize("pacs", HARVEST_LINES)
def test_harvest_against_an_unreachable_pacs_is_one_line(pacs: str, tmp_path: Path) -> None:
    """The retries of a task and of its associations used to multiply (12 connections, 70 s,
    434 lines with 5 tracebacks): now the one policy makes Backoff().attempts connections
    (counted where the PACS accepts and drops them)."""
    peer = DroppingPeer() if pacs == "drops us" else None
    port = peer.port if peer else free_port()
    try:
        result = run("harvest", *WINDOW, "--pacs", f"PACS@127.0.0.1:{port}",
                     "--catalog", str(tmp_path / "c.sqlite"), "--staging",
                     str(tmp_path / "staging"), "--out", str(tmp_path / "seg"),
                     env={"PREFECT_HOME": str(tmp_path / "prefect"),
                          "SAM2CT_STORE_PORT": str(free_port())})
    finally:
        if peer:
            peer.close()
    lines = stderr_lines(result)
    attempts = Backoff().attempts
    assert result.returncode == 1 and (peer is None or peer.connections == attempts)
    assert all(line.startswith("INFO ") for line in lines[:-1]) and len(lines) <= 2, lines
    assert lines[-1] == (f"sam2ct harvest: error: PACS PACS@127.0.0.1:{port}: "
                         f"{HARVEST_LINES[pacs]} (gave up after {attempts} attempts)")
    assert "telemetry" not in result.stderr.lower() and "analytics" not in result.stderr


def test_pacs_find_is_quiet(orthanc, local) -> None:
    result = run("pacs", "find", "--pacs", orthanc.address, "--level", "series",
                 "--ae-title", local.ae_title)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # pynetdicom's datasets and association lines: only with -v
    assert len(result.stdout.strip().splitlines()) > 1
    verbose = run("-v", "pacs", "find", "--pacs", orthanc.address, "--level", "series")
    assert "pynetdicom" in verbose.stderr


def test_a_rejected_calling_ae_title_says_whom_to_register(orthanc) -> None:
    result = run("pacs", "echo", "--pacs", orthanc.address, "--ae-title", "STRANGER",
                 "--store-port", "11999")
    line = one_error_line(result)
    assert "rejected the association from STRANGER" in line
    assert ("ask the PACS administrator to register our AE title STRANGER (this host, port "
            "11999), or set the one it knows (SAM2CT_AE_TITLE or --ae-title)") in line


def test_a_c_move_the_pacs_cannot_deliver_says_what_to_register(orthanc, local, corpus,
                                                                tmp_path: Path) -> None:
    """Orthanc knows our AE title at ``local.store_port``; we listen on another port, so its
    C-MOVE cannot reach us and it answers 0xC000."""
    ours = free_port()
    result = run("pacs", "retrieve", "--pacs", orthanc.address, "--ae-title", local.ae_title,
                 "--store-port", str(ours), "--study", corpus.a.study_uid, "--out",
                 str(tmp_path / "staging"))
    lines = stderr_lines(result)
    assert result.returncode == 2
    assert lines[:-1] == [f"INFO dicom_io.pacs.storage: storage SCP {local.ae_title} listening "
                          f"on 127.0.0.1 port {ours}"]
    line = lines[-1]
    assert "C-MOVE failed with status 0xC" in line
    assert (f"the PACS must know our AE title {local.ae_title} with this host and port {ours} "
            "as a DICOM modality (ask its administrator)") in line
    assert "--method get" in line


def test_a_storage_port_in_use_is_one_line(orthanc, local, corpus, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        retrieve = run("pacs", "retrieve", "--pacs", orthanc.address, "--ae-title",
                       local.ae_title, "--store-port", str(port), "--study",
                       corpus.a.study_uid, "--out", str(tmp_path / "staging"))
        harvest = run("harvest", *WINDOW, "--pacs", orthanc.address,
                      "--catalog", str(tmp_path / "c.sqlite"), "--staging",
                      str(tmp_path / "staging"), "--out", str(tmp_path / "seg"),
                      env={"SAM2CT_STORE_PORT": str(port),
                           "PREFECT_HOME": str(tmp_path / "prefect")})
    for result in (retrieve, harvest):
        line = one_error_line(result)
        assert (f"storage SCP {local.ae_title}: cannot listen on 127.0.0.1 port {port}: "
                "Address already in use; another program (or another sam2ct run) listens "
                "there: stop it, or choose a free port (SAM2CT_STORE_PORT or --store-port) "
                "and register it at the PACS") in line
    assert not (tmp_path / "prefect").exists()  # the harvest failed before Prefect started


# --- the model --------------------------------------------------------------------------------

def test_a_file_that_is_no_checkpoint_is_one_line(synth_dir: Path, tmp_path: Path) -> None:
    import json

    notes = tmp_path / "notes.pt"
    notes.write_text("hello world\n")  # torch.load takes it for a pickle: KeyError
    study = json.loads((synth_dir / "manifest.json").read_text())["studies"][0]
    segment = run("segment", "--series", str(synth_dir / study["ct_dir"]), "--gsps",
                  str(synth_dir / study["gsps"][0]["file"]), "--out", str(tmp_path / "out"),
                  "--model", str(notes), "--no-catalog")
    harvest = run("harvest", *WINDOW, "--pacs", "NOBODY@127.0.0.1:9", "--model", str(notes),
                  "--catalog", str(tmp_path / "c.sqlite"), "--staging",
                  str(tmp_path / "staging"), "--out", str(tmp_path / "seg"),
                  env={"PREFECT_HOME": str(tmp_path / "prefect")})
    for result in (segment, harvest):
        line = one_error_line(result)
        assert result.returncode == 2
        assert line.endswith(f"{notes}: not a readable torch checkpoint (a file saved by "
                             "torch.save, e.g. the published SAM2CT .pt; torch.load raised "
                             "KeyError)"), line
    assert not (tmp_path / "prefect").exists()


# --- Prefect's environment --------------------------------------------------------------------

def test_the_command_line_turns_prefect_telemetry_off_unless_told(tmp_path: Path,
                                                                  monkeypatch) -> None:
    for name in PREFECT_QUIET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "0")  # the user's choice stays
    monkeypatch.delenv("PREFECT_LOGGING_LEVEL", raising=False)
    assert main(["db", "upgrade", "--catalog", str(tmp_path / "c.sqlite")]) == 0
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["DO_NOT_TRACK"] == "0"
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "WARNING"
