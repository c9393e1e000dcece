"""The report's tables are the runner's JSON: regenerating them from experiments/results/ changes
nothing in REPORT.md; and the report's markers are filled, never typed by hand."""

import importlib
import re

import pytest

from experiments import QUESTIONS, common


@pytest.mark.parametrize("question", sorted(QUESTIONS))
def test_report_tables_are_generated_from_the_saved_json(question):
    module = importlib.import_module(QUESTIONS[question])
    result = common.load(getattr(module, "RESULT", question))
    report = common.REPORT.read_text()
    for name, table in module.tables(result).items():
        block = re.search(rf"<!-- table:{re.escape(name)} -->\n(.*?)<!-- /table:{re.escape(name)} -->", report, re.S)
        assert block, f"REPORT.md has no markers for {name}"
        assert block.group(1) == table.rstrip("\n") + "\n", f"{name} differs from what {question}'s JSON gives"


def test_write_report_refuses_a_table_without_markers(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "REPORT", tmp_path / "REPORT.md")
    common.REPORT.write_text("<!-- table:a -->\nold\n<!-- /table:a -->\n")
    assert common.write_report({"a": "| new |"}) == ["a"]
    assert common.REPORT.read_text() == "<!-- table:a -->\n| new |\n<!-- /table:a -->\n"
    with pytest.raises(ValueError, match="no <!-- table:b -->"):
        common.write_report({"b": "x"})
