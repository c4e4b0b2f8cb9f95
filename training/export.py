"""Batch recommendations from a registered (or logged) model to a CSV or Parquet file.

    tailor export --model-uri models:/tailor@champion --users users.csv --k 50 --out recs.parquet

The users file is a CSV/Parquet with a ``user_id`` column, or plain text with one id per line (a
``.txt`` file, or a CSV without a ``user_id`` header). The output has the columns
``user_id, rank, item_id, score`` (rank 1 = best), in the users file's order. Users the model has
never seen are counted and named in the result; they get rows only from models that serve unknown
users (popularity-like fallbacks).

Errors: :class:`ExportError` (a ``ValueError``) for an unreadable users file or output extension.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from features.columns import Columns
from features.settings import Settings

OUTPUT_SUFFIXES = (".csv", ".parquet")


class ExportError(ValueError):
    """The users file cannot be read or the output path has an unsupported extension."""


@dataclass(frozen=True)
class ExportResult:
    """Summary of an export: how many users, rows, and which users the model did not know."""

    path: Path
    n_users: int
    n_rows: int
    unknown_users: int
    unknown_sample: tuple[str, ...]
    model_name: str | None
    model_version: str | None


def read_user_ids(path: str | Path) -> list[str]:
    """Distinct user ids, in file order, from a CSV/Parquet ``user_id`` column or one id per line."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"users file not found: {path}")
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
        if Columns.USER not in frame.columns:
            raise ExportError(f"{path} has no {Columns.USER!r} column (columns: {frame.columns})")
        ids = frame[Columns.USER]
    else:
        ids = _text_ids(path)
    ids = ids.cast(pl.Utf8).str.strip_chars().drop_nulls()
    return ids.filter(ids != "").unique(maintain_order=True).to_list()


def _text_ids(path: Path) -> pl.Series:
    """A CSV's ``user_id`` column, or every line of a headerless file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [c.strip() for c in lines[0].split(",")] if lines else []
    if Columns.USER in header:
        frame = pl.read_csv(path, schema_overrides={Columns.USER: pl.Utf8}, infer_schema_length=0)
        return frame[Columns.USER]
    if len(header) > 1:
        raise ExportError(f"{path} has several columns but none named {Columns.USER!r} (header: {header})")
    return pl.Series(Columns.USER, lines, dtype=pl.Utf8)


def export_recommendations(
    model_uri: str, users_file: str | Path, out: str | Path, settings: Settings, *, k: int = 50
) -> ExportResult:
    """Top-``k`` recommendations of the model at ``model_uri`` for every user of ``users_file``."""
    from training.tracking import load_recommender

    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ExportError(f"output {out} must end in {' or '.join(OUTPUT_SUFFIXES)}")
    if k < 1:
        raise ExportError(f"k must be at least 1, got {k}")
    user_ids = read_user_ids(users_file)
    model, info = load_recommender(model_uri, settings)
    ids = np.asarray(user_ids, dtype=np.str_)
    recs = model.recommend(ids, k, filter_seen=not model.recommends_seen_items).to_frame()
    unknown = [u for u in user_ids if u not in model.users]
    _write(recs, out)
    return ExportResult(
        out, len(user_ids), recs.height, len(unknown), tuple(unknown[:5]), info.model_name, info.model_version
    )


def _write(frame: pl.DataFrame, out: Path) -> None:
    """Write atomically: a partial file never replaces a previous export."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".parquet":
        frame.write_parquet(tmp)
    else:
        frame.write_csv(tmp)
    tmp.replace(out)
