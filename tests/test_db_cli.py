"""`sam2ct db upgrade`, `sam2ct catalog query|stats` and `sam2ct export` argument errors."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from alembic.script import ScriptDirectory
from test_db_catalog import series_results

from db import Recorder, open_catalog
from db.migrate import alembic_config, current_revision
from flows.cli import main


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite catalog with two series (line 2+3 mL in 2025, arrow 6+7 mL in 2024)."""
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    engine = open_catalog(url)
    rec = Recorder(engine)
    rec.record_series_results(series_results(1, kind="line", volume=2.0, day=date(2025, 5, 1)))
    rec.record_series_results(series_results(2, kind="arrow", volume=6.0, day=date(2024, 5, 1)))
    engine.dispose()
    return url


def test_db_upgrade_migrates_an_empty_catalog(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.sqlite'}"  # a missing folder: tests/test_cli_failures.py
    assert main(["db", "upgrade", "--catalog", url]) == 0
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None and current_revision(url) == head


def test_db_upgrade_uses_the_environment(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "env.sqlite"
    monkeypatch.setenv("SAM2CT_DATABASE_URL", f"sqlite:///{target}")
    assert main(["db", "upgrade"]) == 0 and target.is_file()


def test_catalog_query_formats(url: str, capsys, tmp_path: Path) -> None:
    assert main(["catalog", "query", "--catalog", url, "--kind", "line", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["volume_ml"] for r in rows] == [2.0, 3.0] and {r["kind"] for r in rows} == {"line"}
    assert main(["catalog", "query", "--catalog", url, "--min-volume", "5", "--format",
                 "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame.volume_ml) == [6.0, 7.0]
    out = tmp_path / "q.parquet"
    assert main(["catalog", "query", "--catalog", url, "--since", "2025-01-01", "--format",
                 "parquet", "--out", str(out)]) == 0
    assert len(pd.read_parquet(out)) == 2
    assert main(["catalog", "query", "--catalog", url, "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert "arrow" in table and "line" in table and "PAT-SECRET" not in table


def test_catalog_query_table_shows_one_page(url: str, capsys, monkeypatch) -> None:
    monkeypatch.setattr("flows.cli.catalog.TABLE_PAGE", 3)
    assert main(["catalog", "query", "--catalog", url]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1 + 3  # header + one page of 4 rows
    assert "first 3 rows shown" in captured.err
    assert main(["catalog", "query", "--catalog", url, "--all"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1 + 4 and "rows shown" not in captured.err
    assert main(["catalog", "query", "--catalog", url, "--format", "csv"]) == 0
    assert len(pd.read_csv(io.StringIO(capsys.readouterr().out))) == 4
    assert main(["catalog", "query", "--catalog", url, "--limit", "2", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_catalog_stats_json(url: str, capsys) -> None:
    assert main(["catalog", "stats", "--catalog", url, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["tables"]["segmentations"] == 4
    groups = {g["kind"]: g for g in document["groups"]}
    assert groups["arrow"]["total_volume_ml"] == pytest.approx(13.0)


def test_bad_inputs_fail_with_one_line(url: str, capsys, tmp_path: Path) -> None:
    assert main(["catalog", "query", "--catalog", url, "--min-volume", "5",
                 "--max-volume", "1"]) == 2
    assert "minimum above maximum" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "x"), "--format", "nifti", "--catalog", url,
                 "--split", "0.5,0.2"]) == 2
    assert "sum to 0.7" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "x"), "--format", "nifti", "--catalog", url,
                 "--kind", "ellipse"]) == 2
    assert "nothing to export" in capsys.readouterr().err
