"""Catalog benchmark on PostgreSQL: bulk-load N segmentations, time the researchers' queries.

Loads N segmentations with their annotations (1 each), presentation states (N/4), series and
studies (N/20) and patients (N/40) with COPY into a fresh database (summary triggers off during
the COPY, then one db.summary.rebuild), prints the first-page plan, then reports p50/p95 latency
of the typical queries through db.queries. Peers measured in the same run: for row queries the
same SQL on a raw psycopg connection (overhead of our query layer); for stats, the same figures
by GROUP BY over the segmentation table (what the summary saves); Recorder's idempotent upserts
(rows/s) against COPY (rows/s).

    .venv/bin/python bench/bench_catalog.py --n 1000000
    .venv/bin/python bench/bench_catalog.py --n 100000 --repeats 50   # quicker
"""

from __future__ import annotations

import argparse
import io
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db import CatalogFilter, Recorder, open_catalog, query_rows, stats  # noqa: E402
from db.queries import _segmentation_stats, select_segmentations  # noqa: E402
from db.records import (  # noqa: E402
    AnnotationRecord,
    PresentationStateRecord,
    SegmentationRecord,
    SeriesRecord,
    SeriesResults,
    StudyRecord,
)
from db.summary import rebuild  # noqa: E402

KINDS = np.array(["line", "arrow", "bidirectional", "ellipse", "circle", "polygon"])
MODELS = np.array(["sam2ct", "classical"])
STATUSES = np.array(["ok", "needs-review", "failed"])
FIRST_DAY = date(2020, 1, 1)
DAYS = 6 * 365


def _copy(conn: psycopg.Connection, table: str, frame: pd.DataFrame) -> None:
    """COPY a DataFrame into ``table`` as CSV, in chunks."""
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    with conn.cursor() as cur, cur.copy(
            f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv, NULL '\\N')") as copy:
        for start in range(0, len(frame), 200_000):
            buffer = io.StringIO()
            frame.iloc[start:start + 200_000].to_csv(buffer, index=False, header=False,
                                                     na_rep="\\N")
            copy.write(buffer.getvalue())


def _uids(prefix: str, n: int) -> np.ndarray:
    return np.char.add(f"1.2.826.0.1.3680043.10.{prefix}.", np.arange(1, n + 1).astype(str))


def load(dsn: str, n: int, rng: np.random.Generator) -> dict[str, float]:
    """Generate and COPY the catalog rows; return rows per table and seconds."""
    n_ps, n_study = max(n // 4, 1), max(n // 20, 1)
    n_patient = max(n // 40, 1)
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        _copy(conn, "patient_pseudonym", pd.DataFrame({
            "id": np.arange(1, n_patient + 1), "patient_id": _uids("p", n_patient),
            "pseudonym": [f"{i:016x}" for i in rng.permutation(n_patient)]}))
        dates = np.array([FIRST_DAY + timedelta(days=int(d))
                          for d in rng.integers(0, DAYS, n_study)])
        _copy(conn, "study", pd.DataFrame({
            "id": np.arange(1, n_study + 1), "study_instance_uid": _uids("1", n_study),
            "patient_pseudonym": [f"{i:016x}" for i in rng.integers(0, n_patient, n_study)],
            "study_date": dates}))
        _copy(conn, "series", pd.DataFrame({
            "id": np.arange(1, n_study + 1), "series_instance_uid": _uids("2", n_study),
            "study_id": np.arange(1, n_study + 1), "modality": "CT",
            "body_part": rng.choice(["CHEST", "ABDOMEN", "HEAD", "PELVIS"], n_study),
            "slices": rng.integers(80, 400, n_study), "spacing_slice_mm": 1.25,
            "spacing_row_mm": 0.7, "spacing_col_mm": 0.7, "manufacturer": "ACME",
            "storage_path": np.char.add("/archive/", np.arange(n_study).astype(str))}))
        ps_series = rng.integers(1, n_study + 1, n_ps)
        _copy(conn, "presentation_state", pd.DataFrame({
            "id": np.arange(1, n_ps + 1), "sop_instance_uid": _uids("3", n_ps),
            "series_id": ps_series}))
        ann_ps = np.repeat(np.arange(1, n_ps + 1), 4)[:n]
        kinds = rng.choice(KINDS, n, p=[0.35, 0.3, 0.15, 0.1, 0.05, 0.05])
        _copy(conn, "annotation", pd.DataFrame({
            "id": np.arange(1, n + 1), "presentation_state_id": ann_ps,
            "series_id": ps_series[ann_ps - 1],
            "gsps_index": np.tile(np.arange(4), n_ps)[:n], "kind": kinds,
            "slice_index": rng.integers(0, 300, n), "points_voxel": "[[1,2],[3,4]]",
            "points_mm": "[[1,2,3],[4,5,6]]", "length_mm": rng.uniform(5, 80, n).round(1)}))
        volume = np.exp(rng.normal(0.5, 1.2, n)).round(3)
        # the summary triggers would fire per COPY row: off during the load, one rebuild after
        conn.execute("ALTER TABLE segmentation DISABLE TRIGGER USER")
        _copy(conn, "segmentation", pd.DataFrame({
            "id": np.arange(1, n + 1), "annotation_id": np.arange(1, n + 1),
            "gsps_sop_instance_uid": _uids("3", n_ps)[ann_ps - 1],
            "annotation_index": np.tile(np.arange(4), n_ps)[:n],
            "series_id": ps_series[ann_ps - 1], "kind": kinds,
            "study_date": dates[ps_series[ann_ps - 1] - 1],
            "model_name": rng.choice(MODELS, n, p=[0.7, 0.3]), "model_version": "1.0",
            "checkpoint_sha256": "", "status": rng.choice(STATUSES, n, p=[0.85, 0.1, 0.05]),
            "seg_sop_instance_uid": _uids("4", n), "segment_number": 1,
            "seg_path": "/segs/x.dcm", "voxels": (volume * 1000).astype(int),
            "volume_ml": volume, "long_axis_mm": rng.uniform(5, 80, n).round(1)}))
        for table in ("patient_pseudonym", "study", "series", "presentation_state",
                      "annotation", "segmentation"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"(SELECT max(id) FROM {table}))")
        conn.execute("ALTER TABLE segmentation ENABLE TRIGGER USER")
        conn.commit()
    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as sa_conn:
        rebuild(sa_conn)
    engine.dispose()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum does soon after a bulk load
    return {"seconds": time.perf_counter() - started, "rows": n * 2 + n_ps + 2 * n_study}


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """p50 and p95 latency in ms of ``fn`` over ``repeats`` calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


def upsert_rate(url: str, count: int) -> float:
    """Segmentations per second through Recorder (with their study, series, GSPS, annotation)."""
    engine = open_catalog(url, migrate=False)
    rec = Recorder(engine)
    start = time.perf_counter()
    for i in range(count // 4):
        gsps = f"1.2.826.0.1.3680043.11.{i}.3"
        anns = tuple(AnnotationRecord(gsps, k, "line") for k in range(4))
        segs = tuple(SegmentationRecord(gsps_sop_instance_uid=gsps, annotation_index=k,
                                        model_name="sam2ct", model_version="1.0",
                                        volume_ml=1.0 + k) for k in range(4))
        rec.record_series_results(SeriesResults(
            StudyRecord(f"1.2.826.0.1.3680043.11.{i}.1", f"BENCH-{i}", date(2025, 1, 1)),
            SeriesRecord(f"1.2.826.0.1.3680043.11.{i}.2", f"1.2.826.0.1.3680043.11.{i}.1"),
            (PresentationStateRecord(gsps, f"1.2.826.0.1.3680043.11.{i}.2"),), anns, segs))
    seconds = time.perf_counter() - start
    engine.dispose()
    return (count // 4) * 4 / seconds


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="segmentations to load")
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument("--database", help="time the queries on this already loaded database "
                                           "(from --keep; --n must match)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    name = args.database or f"sam2ct_bench_{secrets.token_hex(3)}"
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    if args.database is None:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        run(url, dsn, args, rng)
    finally:
        if not args.keep and args.database is None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


def run(url: str, dsn: str, args: argparse.Namespace, rng: np.random.Generator) -> None:
    """Load, then time each query and its raw-psycopg peer."""
    engine = open_catalog(url)
    if args.database is None:
        loaded = load(dsn, args.n, rng)
    else:
        loaded = {"seconds": float("nan"), "rows": 0}
    print(f"loaded {args.n:,} segmentations ({loaded['rows']:,} rows) by COPY in "
          f"{loaded['seconds']:.1f} s = {loaded['rows'] / loaded['seconds']:,.0f} rows/s")
    n_study = max(args.n // 20, 1)
    typical = CatalogFilter(kind="line", min_volume_ml=1.0, max_volume_ml=10.0,
                            since=date(2024, 1, 1), until=date(2024, 12, 31))
    line_2024 = CatalogFilter(kind="line", since=date(2024, 1, 1), until=date(2024, 12, 31))
    study_uids = [f"1.2.826.0.1.3680043.10.1.{i}" for i in rng.integers(1, n_study + 1, 1000)]
    picks, raw_picks = iter(study_uids * 10), iter(study_uids * 10)
    queries: dict[str, tuple[Callable[[], object], str, dict]] = {
        "kind+volume+date (first 100 rows)": (
            lambda: query_rows(engine, typical, limit=100),
            *_compiled(select_segmentations(typical, 100), engine)),
        "kind+volume+date (first 1000 rows)": (
            lambda: query_rows(engine, typical, limit=1000),
            *_compiled(select_segmentations(typical, 1000), engine)),
        "kind+volume+date (all rows)": (
            lambda: query_rows(engine, typical),
            *_compiled(select_segmentations(typical), engine)),
        "one study": (
            lambda: query_rows(engine, CatalogFilter(study_instance_uid=next(picks))),
            *_compiled(select_segmentations(CatalogFilter(study_instance_uid="?")), engine)),
        # peer: the same figures grouped over the segmentation table (what stats() did before)
        "stats by kind, model, status": (
            lambda: stats(engine), *_compiled(_segmentation_stats(CatalogFilter()), engine)),
        "stats kind=line, 2024": (
            lambda: stats(engine, line_2024),
            *_compiled(_segmentation_stats(line_2024), engine)),
    }
    _explain(dsn, *_compiled(select_segmentations(typical, 1000), engine))
    with psycopg.connect(dsn, autocommit=True) as raw:
        for label, (fn, sql, params) in queries.items():
            rows = len(fn())
            repeats = args.repeats if "all rows" not in label else max(5, args.repeats // 10)
            if label == "one study":  # the raw peer reads the same random studies
                def raw_fn(s=sql, p=params):
                    return raw.execute(s, {**p, next(iter(p)): next(raw_picks)}).fetchall()
            else:
                def raw_fn(s=sql, p=params):
                    return raw.execute(s, p).fetchall()
            p50, p95 = timed(fn, repeats)
            r50, r95 = timed(raw_fn, repeats)
            goal = "meets" if p95 < 50 else "misses"
            peer = "GROUP BY segmentation" if label.startswith("stats") else "raw psycopg"
            print(f"{label:38s} rows={rows:>6,}  p50={p50:7.1f} ms  p95={p95:7.1f} ms "
                  f"({goal} p95<50ms)  {peer} p50={r50:6.1f} p95={r95:6.1f} ms  ours/peer p50"
                  f" = {p50 / max(r50, 1e-6):4.2f}")
    rate = upsert_rate(url, 2000) if args.database is None else float("nan")
    copy_rate = args.n / max(loaded["seconds"], 1e-9)
    print(f"Recorder upserts: {rate:,.0f} segmentations/s (with study, series, GSPS, annotation);"
          f" COPY: {copy_rate:,.0f} segmentations/s; COPY/upsert = {copy_rate / rate:.0f}x")
    engine.dispose()


def _compiled(stmt, engine) -> tuple[str, dict]:
    """The statement as psycopg SQL with named parameters."""
    compiled = stmt.compile(dialect=engine.dialect)
    return str(compiled), compiled.params


def _explain(dsn: str, sql: str, params: dict) -> None:
    """Print the plan's main lines of the first-page query (index range scan, no Sort?)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        plan = [row[0] for row in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)]
    keep = ("Limit", "Sort", "Index", "Execution Time", "Buffers")
    print("first page plan:\n  " + "\n  ".join(line.strip()[:110] for line in plan
                                                if any(word in line for word in keep))[:1500])


if __name__ == "__main__":
    sys.exit(main())
