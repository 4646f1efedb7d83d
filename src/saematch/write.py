"""Write one pair's matches to Parquet, with provenance as JSON in the file metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import SaeError

PROVENANCE_KEY = b"saematch.provenance"

SCHEMA = pa.schema([
    pa.field("feature", pa.int32(), nullable=False),
    pa.field("match", pa.int32()),
    pa.field("top1", pa.int32(), nullable=False),
    pa.field("cosine", pa.float32()),
    pa.field("mse", pa.float32()),
    pa.field("top1_cosine", pa.float32(), nullable=False),
    pa.field("persists", pa.bool_(), nullable=False),
    pa.field("confidence", pa.float32()),  # null where the verdict cannot judge (unjudged)
    pa.field("top1_persists", pa.bool_(), nullable=False),
    pa.field("top1_confidence", pa.float32()),
    pa.field("unjudged", pa.string()),  # why the weights cannot judge the feature (null: judged)
    pa.field("evidence", pa.list_(pa.float32(), 7)),  # saematch.verdict.EVIDENCE, for the assignment's partner
    pa.field("top1_evidence", pa.list_(pa.float32(), 7)),  # … for the top-1 partner
    pa.field("dead", pa.bool_()),  # a dead feature (saematch.verdict.dead_rows): not persisting, not dying
])


_NUMPY_OF = {pa.int32(): np.int32, pa.int64(): np.int64, pa.float32(): np.float32, pa.float64(): np.float64}


def arrow_array(values, type: pa.DataType, mask: np.ndarray | None = None) -> pa.Array:
    """``values`` (n,) as an Arrow array of ``type`` (int32, int64, float32, float64, bool or
    string; a string's None is null), null where ``mask`` (n,) bool is True; NaN stays NaN.

    Built from NumPy buffers: ``pa.array`` imports pandas on every call (0.6 s of a small
    job's 3 s). An integer column must hold its values exactly (no float or overflowing input).
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"a column is one-dimensional, not of shape {values.shape}")
    valid = None if mask is None else ~np.asarray(mask, bool)
    if pa.types.is_string(type):
        present = np.array([v is not None for v in values.tolist()], bool)
        valid = present if valid is None else valid & present
        encoded = [str(v).encode() if ok else b"" for v, ok in zip(values.tolist(), valid)]
        offsets = np.zeros(len(encoded) + 1, np.int32)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        buffers = [pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    elif pa.types.is_boolean(type):
        buffers = [pa.py_buffer(np.packbits(values.astype(bool), bitorder="little"))]
    else:
        if pa.types.is_integer(type) and valid is not None:
            values = np.where(valid, values, 0)  # what a null slot holds does not matter
        data = np.ascontiguousarray(values, dtype=_NUMPY_OF[type])
        if pa.types.is_integer(type) and values.size and not np.array_equal(data, values):
            raise ValueError(f"{values.dtype} values do not fit {type} exactly")
        buffers = [pa.py_buffer(data)]
    bitmap = None if valid is None or valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(type, len(values), [bitmap, *buffers])


def write_matches(path: str | Path, columns: dict[str, np.ndarray], provenance: dict) -> None:
    """Write the table (rows in feature order; unmatched rows get null match/cosine/mse).

    Written to a temporary name and renamed, so a failed write leaves no partial file.
    """
    match = columns["match"]
    unmatched = match < 0
    arrays = []
    for field in SCHEMA:
        values = columns[field.name] if field.name != "dead" else columns.get("dead", np.zeros(len(match), bool))
        if pa.types.is_fixed_size_list(field.type):
            flat = arrow_array(np.asarray(values).reshape(-1), field.type.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
            continue
        mask = unmatched if field.name in ("match", "cosine", "mse") else None
        if field.name in ("confidence", "top1_confidence"):
            mask = np.isnan(values)
        arrays.append(arrow_array(values, field.type, mask))
    table = pa.Table.from_arrays(arrays, schema=SCHEMA)
    _write_table(path, table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)}))


def flow_schema(k: int) -> pa.Schema:
    """One row per residual feature of layer L (saematch.flow): top-1 index and cosine per
    module (null where the module is not available), the top-k lists, and the case A–D."""
    fields = [pa.field("feature", pa.int32(), nullable=False)]
    for m in ("res", "mlp", "att"):
        fields += [pa.field(m, pa.int32()), pa.field(f"s_{m}", pa.float32())]
    for m in ("res", "mlp", "att"):
        fields += [pa.field(f"{m}_top", pa.list_(pa.int32(), k)), pa.field(f"s_{m}_top", pa.list_(pa.float32(), k))]
    fields += [pa.field("case", pa.string(), nullable=False)]
    # the verdict on the res predecessor (saematch.flow.predecessor_verdict): null without one
    return pa.schema(fields + [pa.field("res_confidence", pa.float32()), pa.field("res_unjudged", pa.string())])


def write_flow(path: str | Path, columns: dict, k: int, provenance: dict) -> None:
    """Write one layer's predecessor scores (:func:`saematch.flow.predecessor_scores` plus
    ``feature`` and ``case``); a missing module's columns are all null."""
    schema = flow_schema(k)
    n = len(columns["feature"])
    arrays = []
    for field in schema:
        values = columns.get(field.name)
        if values is None:
            arrays.append(pa.nulls(n, type=field.type))
        elif pa.types.is_fixed_size_list(field.type):
            flat = arrow_array(np.asarray(values).reshape(-1), field.type.value_type)
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, k))
        else:
            arrays.append(arrow_array(values, field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    _write_table(path, table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)}))


class NotWritableError(SaeError):
    """A results folder this job cannot write (made read-only while the run went on). A
    SaeError: the job fails with this one line and is not retried (saematch.logs.job)."""


def _write_table(path: str | Path, table: pa.Table) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed job
            stale.unlink(missing_ok=True)
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except OSError as exc:
        folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), path.parent)
        if os.access(folder, os.W_OK):
            raise
        reason = os.strerror(exc.errno) if exc.errno else "permission denied"
        raise NotWritableError(f"{folder}: not writable ({reason}): {path.name} was not written") from None
    finally:
        if os.access(tmp.parent, os.W_OK):
            tmp.unlink(missing_ok=True)


def read_provenance(path: str | Path) -> dict:
    """The provenance dict stored in a matches file."""
    return json.loads(pq.ParquetFile(path).metadata.metadata[PROVENANCE_KEY])


SAE_KEYS = ("src", "dst", "target", "res", "mlp", "att")  # provenance keys that hold an SAE's pointer


def _same_inputs(a: dict, b: dict) -> bool:
    """The same SAEs in the same roles (files by sha256), options and algorithm version."""
    def files(pv, side):
        return {r: (f["filename"], f["sha256"]) for r, f in pv[side]["files"].items()}
    sides = [k for k in SAE_KEYS if k in b]
    return (sides == [k for k in SAE_KEYS if k in a] and all(files(a, s) == files(b, s) for s in sides)
            and a["options"] == b["options"] and a["algo_version"] == b["algo_version"]
            and a.get("model_files") == b.get("model_files"))


def reuse_identical(path: str | Path, candidates: list[str | Path], wanted: dict) -> str | None:
    """Copy an existing results file (a pair's matches, a layer's flow) computed from the same
    SAE files, options and algorithm (another variant's) to ``path``, with this variant's
    provenance; return its path or None.

    ``wanted``: the provenance this job would write (its SAEs' pointers under SAE_KEYS,
    options, algo_version, and the model's files for projected sites). The copy records
    ``reused_from``.
    """
    for other in candidates:
        if Path(other) == Path(path) or not Path(other).exists():
            continue
        try:
            provenance = read_provenance(other)
            if not _same_inputs(provenance, wanted):
                continue
            table = pq.read_table(other)
        except (OSError, KeyError, ValueError, TypeError):
            continue
        provenance = {**provenance, **{k: wanted[k] for k in ("model", "variant", "site", "layer") if k in wanted},
                      "reused_from": str(other)}
        _write_table(path, table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)}))
        return str(other)
    return None


def write_frame(path: str | Path, frame, provenance: dict) -> None:
    """A polars DataFrame to Parquet with provenance, written whole or not at all."""
    table = frame.to_arrow()
    _write_table(path, table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)}))
