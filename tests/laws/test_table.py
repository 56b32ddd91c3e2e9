"""Reading points: CSV and JSON files, encodings, and one way of naming rows in errors (the file line)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmlab.laws.base import power_law
from lmlab.laws.table import as_columns, number_column, read_table, where

LAW = power_law("p", "x", "y")


def test_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffx,y\n1,2\n4,4\n16,8\n".encode())
    cols = read_table(path)
    assert list(cols) == ["x", "y"]
    assert LAW.fit(path, n_boot=0).params["e"] == pytest.approx(0.5, abs=1e-6)


def test_json_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(("\ufeff" + json.dumps({"x": [1, 4, 16], "y": [2, 4, 8]})).encode())
    np.testing.assert_array_equal(read_table(path)["y"], [2.0, 4.0, 8.0])


def test_binary_or_non_utf8_file_is_refused_naming_the_file(tmp_path):
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("x,y\n1,2\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv: not a UTF-8 text file \(byte 0xe9"):
        read_table(latin)
    png = tmp_path / "image.csv"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ValueError, match="image.csv: not a UTF-8 text file"):
        read_table(png)
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"x,y\n1,2\x00\n")
    with pytest.raises(ValueError, match="nul.csv: contains NUL bytes"):
        read_table(nul)


def test_invalid_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "pts.json"
    path.write_text('[{"x": 1, "y": 2},\n {"x": 2 "y": 3}]')
    with pytest.raises(ValueError, match=r"pts.json: not valid JSON at line 2, column 10"):
        read_table(path)
    scalar = tmp_path / "five.json"
    scalar.write_text("5")
    with pytest.raises(ValueError, match="five.json: a JSON table must hold a dict of columns or a list of "
                                         "records, got int"):
        read_table(scalar)


def test_csv_errors_give_the_line_in_the_file_counting_header_comments_and_blanks(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("# provenance\nx,y\n1,2\n\n# a note\n2,abc\n")  # the bad value is on line 6
    with pytest.raises(ValueError, match=r"column 'y' must be numeric, got 'abc' at line 6 of .*runs.csv$"):
        LAW.fit(path)
    path.write_text("# provenance\nx,y\n1,2\n\n2,-3\n")
    with pytest.raises(ValueError, match=r"column 'y' must be > 0 .* got -3.0 at line 5 of .*runs.csv$"):
        LAW.fit(path)
    path.write_text('x,y,note\n1,2,"two\nlines"\n2,,ok\n')  # a quoted field spans lines 2-3
    with pytest.raises(ValueError, match=r"column 'y' has an empty value at line 4 of .*runs.csv$"):
        LAW.fit(path)
    path.write_text("x,y\r\n1,2\r\nnan,3\r\n")
    with pytest.raises(ValueError, match=r"column 'x' has a non-finite value nan at line 3 of .*runs.csv$"):
        LAW.fit(path)
    path.write_text("# c\nx,x,y\n1,2,3\n")
    with pytest.raises(ValueError, match=r"runs.csv: the header \(line 2\) repeats column names \['x'\]"):
        read_table(path)


def test_json_errors_give_the_line_where_the_record_or_value_starts(tmp_path):
    records = tmp_path / "records.json"
    records.write_text('[\n  {"x": 1, "y": 2},\n  {"x": 2,\n   "y": 3},\n  {"x": null, "y": 4}\n]')
    with pytest.raises(ValueError, match=r"column 'x' has an empty value at line 5 of .*records.json$"):
        LAW.fit(records)
    records.write_text('[{"x": 1, "y": 2},\n {"x": 2}]')
    with pytest.raises(ValueError, match=r"the record at line 2 of .*records.json lacks key 'y'"):
        LAW.fit(records)
    columns = tmp_path / "columns.json"
    columns.write_text('{"points": {"x": [1, 2,\n 3],\n "y": [1,\n 2,\n -3]}}')
    with pytest.raises(ValueError, match=r"column 'y' must be > 0 .* got -3.0 at line 5 of .*columns.json$"):
        LAW.fit(columns)


def test_in_memory_points_name_rows_from_one():
    cols = as_columns({"x": [1.0, 2.0, float("inf")]})
    assert where(cols, 0) == "row 1"
    with pytest.raises(ValueError, match="column 'x' has a non-finite value inf at row 3$"):
        number_column(cols, "x")
    with pytest.raises(ValueError, match="the record at row 2 lacks key 'y'"):
        as_columns([{"x": 1, "y": 2}, {"x": 2}])
