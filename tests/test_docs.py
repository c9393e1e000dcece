"""docs/benchmarks.md is what its JSON generates: no figure there is typed by hand."""

from bench import docs


def test_benchmarks_document_equals_what_its_json_generates():
    assert docs.DOC.read_text() == docs.render(), "regenerate it: python -m bench.docs"
