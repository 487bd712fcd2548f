"""Text sources and the default corpus."""

from __future__ import annotations

import json

import pytest

from mlx_interp.data import (
    _root_documents,
    corpus_path,
    is_heldout,
    read_documents,
    split_documents,
)


def test_text_file_one_document_per_line(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first doc\n\nsecond doc\nstill second\n\n\nthird\n")
    assert list(read_documents(f)) == ["first doc", "second doc\nstill second", "third"]
    f.write_text("one\ntwo\n  \nthree\n".replace("  \n", ""))
    assert list(read_documents(f)) == ["one", "two", "three"]


def test_folder_and_jsonl(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bee\n")
    (tmp_path / "d" / "sub" / "a.txt").write_text("ay\n\nstill ay")
    (tmp_path / "d" / "skip.md").write_text("not read")
    assert list(read_documents(tmp_path / "d")) == ["bee", "ay\n\nstill ay"]
    j = tmp_path / "x.jsonl"
    j.write_text(json.dumps({"text": "hello"}) + "\n\n" + json.dumps({"text": "world"}) + "\n")
    assert list(read_documents(j)) == ["hello", "world"]
    j.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(ValueError, match="no string field 'text'"):
        list(read_documents(j))


def test_bad_sources_fail_before_any_work(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="holds no text"):
        read_documents(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="does not exist"):
        read_documents(tmp_path / "missing.txt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="holds no .txt files"):
        read_documents(tmp_path / "nothing")


def test_split_is_a_fixed_partition():
    docs = [f"document number {i}" for i in range(2000)]
    train = list(split_documents(docs, "train"))
    held = list(split_documents(docs, "heldout"))
    assert sorted(train + held) == sorted(docs) and not set(train) & set(held)
    assert 60 < len(held) < 140  # about 1 in 20
    assert held == [d for d in docs if is_heldout(d)]
    with pytest.raises(ValueError, match="split"):
        list(split_documents(docs, "test"))


def test_corpus_documents_are_docstrings_and_docs(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "m.py").write_text(
        '"""Module docstring that is long enough to be kept in the corpus."""\n'
        "def f():\n    '''Short.'''\n"
        "class C:\n    '''A class docstring, also long enough to be kept here.'''\n"
    )
    (pkg / "tests" / "t.py").write_text('"""Tests are skipped: long enough but in tests/."""')
    (pkg / "README.md").write_text("# Title\n\nSome documentation text of reasonable length.")
    (pkg / "broken.py").write_text("def (:\n")
    docs = list(_root_documents("pkg", pkg))
    assert [s for s, _ in docs] == ["pkg/README.md", "pkg/m.py:1", "pkg/m.py:4"]
    assert corpus_path().name.startswith("default-v")


def test_data_source_split_fingerprint_and_overlap(tmp_path):
    from mlx_interp.data import DataSource

    docs = [f"document number {i} about something" for i in range(60)]
    f = tmp_path / "d.txt"
    f.write_text("\n\n".join(docs))
    train, held = DataSource(f, "train"), DataSource(f, "heldout")
    assert list(held.documents()) == [d for d in docs if is_heldout(d)]
    assert list(train.documents()) == [d for d in docs if not is_heldout(d)]
    assert train.fingerprint() == held.fingerprint() == DataSource(f, "all").record()["fingerprint"]
    rec = train.record()
    assert rec["split"] == "train" and rec["data"] == str(f.resolve())
    assert not held.overlaps(rec) and DataSource(f, "all").overlaps(rec) and train.overlaps(rec)
    with pytest.raises(ValueError, match="--allow-train-data"):
        train.check_not_trained_on(rec)
    train.check_not_trained_on(rec, allow=True)
    held.check_not_trained_on(rec)
    f.write_text("\n\n".join(docs[:-1]))  # other bytes: other data
    assert not DataSource(f, "train").overlaps(rec)
    # the default corpus: trained on its train split, evaluated on its held-out split
    default = DataSource(None, "train").record()
    assert not DataSource(None, "heldout").overlaps(default)
    assert DataSource(None, "all").overlaps(default) and not held.overlaps(default)
    with pytest.raises(ValueError, match="split"):
        DataSource(f, "test")


def test_docstrings_are_those_a_full_ast_walk_finds():
    """The corpus reads docstrings by walking statements only; a full ast.walk finds the same
    ones in the same order (a standard-library module with nested and conditional
    definitions, and this package's own modules)."""
    import ast
    import inspect
    import typing
    from pathlib import Path

    import mlx_interp.data as data
    import mlx_interp.model

    for path in (inspect.getfile(typing), data.__file__, mlx_interp.model.__file__):
        tree = ast.parse(open(path, "rb").read())
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        full = [n for n in ast.walk(tree) if isinstance(n, kinds)]
        assert [n for n in data._statements(tree) if isinstance(n, kinds)] == full
        assert len(data._docstrings(Path(path))) > 5
