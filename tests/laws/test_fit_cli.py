"""``lmlab fit``: law lookup, fitting a CSV to JSON, density from a reference curve, clear errors."""

from __future__ import annotations

import json

import pytest

from lmlab.cli.main import main
from lmlab.laws.base import find_law
from lmlab.laws.capacity_density import DATA, ReferenceCurve


def call(*argv: str) -> int:
    return main(["fit", *argv])


def test_list_and_lookup(capsys):
    assert call("--list") == 0
    out = capsys.readouterr().out
    for name in ("densing", "density_loss", "steps_batch", "critical_batch", "batch_compute"):
        assert name in out
    assert find_law("capacity_density").name == "densing"  # a registry name -> its first law
    with pytest.raises(ValueError, match="unknown law 'nope'"):
        find_law("nope")


def test_fit_shipped_table_to_json(tmp_path, capsys):
    out = tmp_path / "fit.json"
    assert call("--law", "densing", str(DATA), "--n-boot", "20", "--out", str(out)) == 0
    assert "doubling_days" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["law"] == "densing" and abs(rec["params"]["A"] - 0.00654) < 3e-4 and rec["n"] == 9


def test_density_from_reference_curve(tmp_path, capsys):
    curve = ReferenceCurve({"a": 40.0, "alpha": 0.3, "b": 300.0, "beta": 0.25},
                           {"c": 0.8, "gamma": -4.0, "l": 2.0, "d": 0.2}, 1e9, (0.25, 0.95), (1e5, 1e9))
    path = curve.save(tmp_path / "curve.json")
    assert call("--reference", str(path), "--score", "0.6", "--params", "1e6") == 0
    est = json.loads(capsys.readouterr().out)
    assert est["flag"] == "ok" and est["density"] == pytest.approx(curve.density(0.6, 1e6).density)
    assert call("--reference", str(path), "--score", "1.01") == 0
    assert json.loads(capsys.readouterr().out)["flag"] == "out_of_range"


def test_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,density\na,1.0\nb,2.0\n")
    for argv, msg in ((("--law", "densing", str(bad)), "'date'"), ((str(bad),), "give --law"),
                      (("--law", "batch_compute", str(bad), "--delta", "big"), "--delta")):
        assert call(*argv) == 2
        assert msg in capsys.readouterr().err


@pytest.mark.parametrize("law, x, y, k, e", [("batch_data", "tokens", "batch", 0.05, 0.47),
                                             ("lr_batch", "batch", "lr", 3e-4, 0.35)])
def test_power_laws_are_recovered_from_a_csv_and_plotted(tmp_path, capsys, law, x, y, k, e):
    import numpy as np

    rng = np.random.default_rng(0)
    xs = np.geomspace(1e6, 1e10, 12) if x == "tokens" else np.geomspace(16, 4096, 12)
    ys = k * xs ** e * np.exp(rng.normal(0, 0.03, len(xs)))  # 3% multiplicative noise
    csv = tmp_path / "points.csv"
    csv.write_text(f"{x},{y}\n" + "".join(f"{a},{b}\n" for a, b in zip(xs, ys)))
    out, png = tmp_path / "fit.json", tmp_path / "fit.png"
    assert call("--law", law, str(csv), "--n-boot", "50", "--out", str(out), "--plot", str(png)) == 0
    rec = json.loads(out.read_text())
    assert rec["params"]["e"] == pytest.approx(e, abs=0.02) and rec["r2"] > 0.98
    lo, hi = rec["ci"]["e"]
    assert lo <= rec["params"]["e"] <= hi
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def lmlab_fit(*argv: str) -> int:
    from lmlab.cli.main import main

    return main(["fit", *argv])


def test_identical_rows_are_refused_instead_of_a_zero_width_interval(tmp_path, capsys):
    same = tmp_path / "same.csv"
    same.write_text("compute,batch\n1e18,100\n1e18,100\n1e18,100\n")
    assert lmlab_fit("--law", "batch_compute", str(same), "--n-boot", "20") == 2
    err = capsys.readouterr().err
    assert "law 'batch_compute' has 2 parameters (k, e) but the 3 points have 1 distinct 'compute' values" in err
    assert "CI" not in capsys.readouterr().out


@pytest.mark.parametrize("cell, problem", [("", "has an empty value"), ("nan", "has a non-finite value nan")])
def test_a_missing_day_names_the_column_and_the_line(tmp_path, capsys, cell, problem):
    table = tmp_path / "models.csv"
    table.write_text(f"# densities\ndays,density\n10,1.0\n{cell},2.0\n40,3.0\n")
    assert lmlab_fit("--law", "densing", str(table), "--n-boot", "20") == 2
    assert f"column 'days' {problem} at line 4 of {table}" in capsys.readouterr().err


def test_a_bad_date_names_the_line(tmp_path, capsys):
    table = tmp_path / "models.csv"
    table.write_text("model,date,density\na,2023-05-01,1.0\nb,May 2023,2.0\n")
    assert call("--law", "densing", str(table)) == 2
    assert f"column 'date' at line 3 of {table}: expected an ISO date" in capsys.readouterr().err


def test_bom_csv_is_fitted(tmp_path, capsys):
    table = tmp_path / "excel.csv"
    table.write_bytes("\ufeffcompute,batch\n1e18,100\n1e19,126\n1e20,158\n".encode())
    assert lmlab_fit("--law", "batch_compute", str(table), "--n-boot", "20") == 0
    assert "n=3" in capsys.readouterr().out


def test_binary_and_broken_json_files_name_the_file(tmp_path, capsys):
    binary = tmp_path / "runs.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert lmlab_fit("--law", "batch_compute", str(binary)) == 2
    assert f"{binary}: not a UTF-8 text file" in capsys.readouterr().err
    broken = tmp_path / "runs.json"
    broken.write_text('{"compute": [1e18, 1e19],\n "batch": [100 120]}')
    assert lmlab_fit("--law", "batch_compute", str(broken)) == 2
    assert f"{broken}: not valid JSON at line 2, column 16" in capsys.readouterr().err


@pytest.mark.parametrize("content, problem", [
    (b"loss,score\n2.0,0.5\n", "not valid JSON at line 1, column 1 (Expecting value)"),
    (b'{"loss": {"a": 1},\n "score": }', "not valid JSON at line 2, column 11"),
    (b"\x89PNG\r\n\x1a\n\xff", "not a UTF-8 JSON file (byte 0x89 at offset 0)"),
    (b"[1, 2]", "holds a JSON list, not an object"),
])
def test_a_reference_that_is_no_curve_json_names_the_file(tmp_path, capsys, content, problem):
    ref = tmp_path / "curve.json"
    ref.write_bytes(content)
    assert call("--reference", str(ref), "--score", "0.6") == 2
    err = capsys.readouterr().err
    assert f"lmlab fit: error: {ref}: {problem}" in err
    assert "expected a reference curve JSON written by ReferenceCurve.save" in err and "Traceback" not in err
