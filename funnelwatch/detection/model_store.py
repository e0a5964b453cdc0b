"""The `detection.prophet_models` table: fitted Prophet models kept between runs, so an hourly
run reuses them instead of refitting every series (~0.2 s a fit). One row per series (the
newest model); the refit schedule itself is the detector's (`ProphetDetector.refit_every`)."""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import pandas as pd

SCHEMA = "detection"
TABLE = f"{SCHEMA}.prophet_models"
COLUMNS = {
    # One row per series, kept by the MERGE below (no PRIMARY KEY: the cluster mode's lake
    # has no constraints; a warehouse made before keeps its key, which MERGE respects).
    "series_id": "VARCHAR",
    "fitted_at": "TIMESTAMP",  # last history timestamp the model saw, naive UTC
    "sigma": "DOUBLE",
    "fit_seconds": "DOUBLE",
    "model_json": "VARCHAR",  # prophet.serialize.model_to_json
    "saved_at": "TIMESTAMPTZ",
}
MODEL_COLUMNS = ["series_id", "fitted_at", "sigma", "fit_seconds", "model_json"]


def ensure_model_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    cols = ", ".join(f'"{n}" {t}' for n, t in COLUMNS.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols})")


def load_prophet_models(
    con: duckdb.DuckDBPyConnection, series_ids: Iterable[str] | None = None
) -> pd.DataFrame:
    """The stored models (`MODEL_COLUMNS` + saved_at), all or those of `series_ids`; empty on a
    first run (no table yet)."""
    sql = f"SELECT {', '.join(COLUMNS)} FROM {TABLE}"
    params: dict = {}
    if series_ids is not None:
        sql += " WHERE list_contains($ids, series_id)"
        params["ids"] = sorted({str(s) for s in series_ids})
    try:
        frame = con.execute(sql + " ORDER BY series_id", params).df()
    except duckdb.CatalogException:  # no schema / table yet: nothing was ever saved
        frame = pd.DataFrame(
            {
                "series_id": pd.Series(dtype=object),
                "fitted_at": pd.Series(dtype="datetime64[ns]"),
                "sigma": pd.Series(dtype=float),
                "fit_seconds": pd.Series(dtype=float),
                "model_json": pd.Series(dtype=object),
                "saved_at": pd.Series(dtype="datetime64[us, UTC]"),
            }
        )
    frame["fitted_at"] = pd.to_datetime(frame["fitted_at"]).astype("datetime64[ns]")
    return frame


def save_prophet_models(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> int:
    """Upsert `frame` (rows of `MODEL_COLUMNS`, as `ProphetDetector.export_models` gives) by
    series_id in one transaction. A stored model fitted on later data than the incoming one
    (e.g. a backfill of old hours saving what it refitted) is kept. Returns the number of rows
    inserted or replaced."""
    if frame is None or len(frame) == 0:
        return 0
    missing = [c for c in MODEL_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"model frame is missing column(s) {missing}")
    rows = frame[MODEL_COLUMNS].drop_duplicates("series_id", keep="last").copy()
    fitted_at = pd.to_datetime(rows["fitted_at"])
    if getattr(fitted_at.dt, "tz", None) is not None:
        fitted_at = fitted_at.dt.tz_convert("UTC").dt.tz_localize(None)
    rows["fitted_at"] = fitted_at.astype("datetime64[us]")
    rows["series_id"] = rows["series_id"].astype(str).astype(object)
    rows["model_json"] = rows["model_json"].astype(str).astype(object)
    rows["sigma"] = rows["sigma"].astype(float)
    rows["fit_seconds"] = rows["fit_seconds"].astype(float)
    ensure_model_table(con)
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_prophet_models", rows)
        written = con.execute(
            f"""MERGE INTO {TABLE} AS stored
                USING (SELECT series_id, fitted_at, sigma, fit_seconds, model_json,
                              now() AS saved_at FROM _prophet_models) AS incoming
                ON stored.series_id = incoming.series_id
                WHEN MATCHED AND incoming.fitted_at >= stored.fitted_at THEN UPDATE SET
                    fitted_at = incoming.fitted_at, sigma = incoming.sigma,
                    fit_seconds = incoming.fit_seconds, model_json = incoming.model_json,
                    saved_at = incoming.saved_at
                WHEN NOT MATCHED THEN INSERT (series_id, fitted_at, sigma, fit_seconds,
                    model_json, saved_at) VALUES (incoming.series_id, incoming.fitted_at,
                    incoming.sigma, incoming.fit_seconds, incoming.model_json,
                    incoming.saved_at)"""
        ).fetchone()[0]
        con.unregister("_prophet_models")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return int(written)
