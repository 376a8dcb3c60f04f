"""bench/gpu_check.py's table, checked here because no GPU is lent to CI: the test row reads
pytest's JUnit file, and a part that fails is a FAIL row while the table goes on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_test_row_counts_passes_failures_and_names_the_failed(gpu_check, tmp_path, capsys):
    junit = tmp_path / "engine.xml"
    junit.write_text('<testsuites><testsuite tests="3" skipped="0" failures="1">'
                     '<testcase name="test_a"/><testcase name="test_b"><failure message="x"/></testcase>'
                     '<testcase name="test_c"/></testsuite></testsuites>')
    gpu_check.tests_row(junit)
    assert capsys.readouterr().out.strip() == \
        "| engine tests on CUDA | random:tiny | 2 passed, 1 failed, 0 skipped (test_b) | none failed | FAIL |"
    junit.write_text("")  # pytest killed by the time limit before writing
    gpu_check.tests_row(junit)
    assert "did not finish" in capsys.readouterr().out


def test_a_failing_part_is_a_fail_row_and_the_rest_runs(gpu_check, capsys):
    gpu_check.main(["--device", "cpu", "--models", "random:nope", "--no-bench"])
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("| part |") and len(rows) == 3
    assert "SamPalError: --model random:nope" in rows[2] and rows[2].endswith("| FAIL |")
