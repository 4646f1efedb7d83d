import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saematch.write import arrow_array, read_provenance, write_matches


def columns(n=6, unmatched=()):
    match = np.arange(n, dtype=np.int32)[::-1].copy()
    match[list(unmatched)] = -1
    return {
        "feature": np.arange(n, dtype=np.int32), "match": match, "top1": match.clip(0),
        "cosine": np.linspace(0, 1, n, dtype=np.float32), "mse": np.ones(n, np.float32),
        "top1_cosine": np.ones(n, np.float32), "persists": match >= 0, "confidence": np.full(n, 0.9, np.float32),
        "top1_persists": np.ones(n, bool), "top1_confidence": np.full(n, 0.8, np.float32),
        "unjudged": np.full(n, None, object), "evidence": np.zeros((n, 7), np.float32),
        "top1_evidence": np.ones((n, 7), np.float32),
    }


def test_matches_file_has_the_documented_schema_and_provenance(tmp_path):
    path = tmp_path / "model=m/site=res/layer=3/part-0.parquet"
    write_matches(path, columns(), {"total_cost": 1.5, "src": {"repo_id": "r"}})
    schema = pq.read_schema(path)
    assert schema.names == ["feature", "match", "top1", "cosine", "mse", "top1_cosine", "persists", "confidence",
                            "top1_persists", "top1_confidence", "unjudged", "evidence", "top1_evidence", "dead"]
    assert [schema.field(c).type for c in schema.names] == [pa.int32()] * 3 + [pa.float32()] * 3 + [
        pa.bool_(), pa.float32()] * 2 + [pa.string()] + [pa.list_(pa.float32(), 7)] * 2 + [pa.bool_()]
    df = pl.read_parquet(path)
    assert df["evidence"].to_list()[0] == [0.0] * 7 and df["top1_evidence"].to_list()[0] == [1.0] * 7
    assert read_provenance(path) == {"total_cost": 1.5, "src": {"repo_id": "r"}}
    assert pl.read_parquet_metadata(path)  # polars sees the metadata too
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert not list(tmp_path.rglob(".*tmp*"))


def test_unmatched_features_have_null_match_cosine_and_mse(tmp_path):
    path = tmp_path / "part-0.parquet"
    write_matches(path, columns(unmatched=[1, 4]), {})
    df = pl.read_parquet(path)
    assert df["match"].null_count() == 2 and df["cosine"].null_count() == 2 and df["mse"].null_count() == 2
    assert df["feature"].to_list() == list(range(6))  # one row per feature, sorted


def test_an_unjudged_feature_has_a_reason_and_a_null_confidence(tmp_path):
    path = tmp_path / "part-0.parquet"
    cols = columns()
    cols["unjudged"][2], cols["confidence"][2], cols["top1_confidence"][2] = "near-duplicate", np.nan, np.nan
    write_matches(path, cols, {})
    df = pl.read_parquet(path)
    assert df["unjudged"].to_list() == [None, None, "near-duplicate", None, None, None]
    assert df["confidence"].null_count() == 1 and df["confidence"][2] is None and df["top1_confidence"][2] is None


def test_hive_paths_give_partition_columns_that_are_not_in_the_files(tmp_path):
    for layer in (0, 1):
        write_matches(tmp_path / f"model=m/site=res/layer={layer}/part-0.parquet", columns(), {})
    df = pl.scan_parquet(tmp_path / "**/*.parquet", hive_partitioning=True,
                         hive_schema={"model": pl.String, "site": pl.String, "layer": pl.Int32}).collect()
    assert df.height == 12 and set(df["layer"]) == {0, 1}
    assert "layer" not in pq.read_schema(tmp_path / "model=m/site=res/layer=0/part-0.parquet").names


@pytest.mark.parametrize("type_, values", [
    (pa.int32(), np.array([3, -1, 7, 0, 2**31 - 1])),
    (pa.int64(), np.array([3, -1, 2**40, 0, 5])),
    (pa.float32(), np.array([0.5, np.nan, -2.0, np.inf, 1e-8])),
    (pa.float64(), np.array([0.5, np.nan, -2.0, np.inf, 1e-300])),
    (pa.bool_(), np.array([True, False, True, True, False, False, True, False, True])),
    (pa.string(), np.array(["persists", None, "", "dead ünïcode", None], object)),
])
@pytest.mark.parametrize("masked", [False, True])
def test_arrow_arrays_built_from_buffers_equal_pyarrows_own(type_, values, masked):
    mask = (np.arange(len(values)) % 3 == 1) if masked else None
    expected = pa.array(values, type=type_, mask=mask, from_pandas=False)
    got = arrow_array(values, type_, mask)
    assert got.validate(full=True) is None
    assert got.type == expected.type
    assert [repr(v) for v in got.to_pylist()] == [repr(v) for v in expected.to_pylist()]  # NaN is NaN
    assert got.null_count == expected.null_count


def test_an_integer_column_refuses_values_it_cannot_hold_but_not_in_null_slots():
    with pytest.raises(ValueError, match="do not fit int32"):
        arrow_array(np.array([1, 2**31]), pa.int32())
    with pytest.raises(ValueError, match="do not fit int32"):
        arrow_array(np.array([1.5, 2.0]), pa.int32())
    got = arrow_array(np.array([1.0, np.nan, 3.0]), pa.int32(), np.array([False, True, False]))
    assert got.to_pylist() == [1, None, 3]
    with pytest.raises(ValueError, match="one-dimensional"):
        arrow_array(np.zeros((2, 3)), pa.float32())


def test_writing_a_matches_file_does_not_import_pandas(tmp_path):
    """pa.array would import pandas (0.6 s of a small match job); the matches writer must not."""
    code = (
        "import sys, numpy as np\n"
        "from test_write import columns\n"
        "from saematch.write import write_matches\n"
        f"write_matches({str(tmp_path / 'm.parquet')!r}, columns(6), {{'model': 'x'}})\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
