"""Write one pair's matches to Parquet, with provenance as JSON in the file metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"saematch.provenance"

SCHEMA = pa.schema([
    pa.field("feature", pa.int32(), nullable=False),
    pa.field("match", pa.int32()),
    pa.field("top1", pa.int32(), nullable=False),
    pa.field("cosine", pa.float32()),
    pa.field("mse", pa.float32()),
    pa.field("top1_cosine", pa.float32(), nullable=False),
])


def write_matches(path: str | Path, columns: dict[str, np.ndarray], provenance: dict) -> None:
    """Write the table (rows in feature order; unmatched rows get null match/cosine/mse).

    Written to a temporary name and renamed, so a failed write leaves no partial file.
    """
    match = columns["match"]
    unmatched = match < 0
    arrays = []
    for field in SCHEMA:
        values = columns[field.name]
        mask = unmatched if field.name in ("match", "cosine", "mse") and unmatched.any() else None
        arrays.append(pa.array(values, type=field.type, mask=mask))
    table = pa.Table.from_arrays(arrays, schema=SCHEMA)
    table = table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed job
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_provenance(path: str | Path) -> dict:
    """The provenance dict stored in a matches file."""
    return json.loads(pq.ParquetFile(path).metadata.metadata[PROVENANCE_KEY])
