"""Naming a corpus: the command-line form PATH[?OPTIONS][:WEIGHT], YAML / JSON spec files, and clear refusals."""

import json

import pytest

from fusion.data.spec import CorpusSpec, Source


@pytest.fixture
def files(tmp_path):
    for name in ("a.jsonl", "b.parquet", "c.txt", "odd:0.5.jsonl"):
        (tmp_path / name).write_text("")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "dataset_info.json").write_text("{}")
    return tmp_path


def test_command_line_sources(files):
    spec = CorpusSpec.parse([f"{files}/a.jsonl:0.7", f"{files}/b.parquet:0.3"])
    assert [(s.format, s.weight) for s in spec.sources] == [("jsonl", 0.7), ("parquet", 0.3)] and spec.weighted
    plain = CorpusSpec.parse([f"{files}/c.txt", str(files / "imgs"), str(files / "saved"), "synthetic?n=50&seed=3",
                              "hf:org/name?split=validation&streaming=true&revision=abc"])
    assert [s.format for s in plain.sources] == ["text", "imagefolder", "saved", "synthetic", "hf"]
    assert not plain.weighted and plain.sources[3].n == 50 and plain.sources[3].seed == 3
    hub = plain.sources[4]
    assert (hub.path, hub.split, hub.streaming, hub.revision) == ("hf:org/name", "validation", True, "abc")
    assert Source.parse("hf:org/name?streaming=1:2").weight == 2.0
    # a path that exists with a colon in its name is a path, not a weight
    assert Source.parse(f"{files}/odd:0.5.jsonl").weight is None
    assert Source.parse(f"{files}/a.jsonl?image_column=jpg&text_column=txt").renames == {"jpg": "image",
                                                                                          "txt": "text"}


def test_spec_files_yaml_and_json(files):
    (files / "corpus.yaml").write_text("sources:\n  - a.jsonl:0.7\n  - {path: b.parquet, weight: 0.3}\n"
                                       "image_cache: /cache\nfetch: false\n")
    spec = CorpusSpec.parse([str(files / "corpus.yaml")])
    assert [s.path for s in spec.sources] == [str(files / "a.jsonl"), str(files / "b.parquet")]
    assert [s.weight for s in spec.sources] == [0.7, 0.3] and spec.image_cache == "/cache" and spec.fetch is False
    (files / "corpus.json").write_text(json.dumps({"sources": ["synthetic?n=5", {"path": "c.txt"}]}))
    spec = CorpusSpec.parse(str(files / "corpus.json"), image_cache="/elsewhere")
    assert [s.format for s in spec.sources] == ["synthetic", "text"] and spec.image_cache == "/elsewhere"


@pytest.mark.parametrize("args, message", [
    (["A/a.jsonl:0.7", "A/b.parquet"], "every source or to none"),
    (["A/a.jsonl:0"], "must be positive"),
    (["A/missing.jsonl"], "does not exist"),
    (["A/nothing"], "does not exist"),
    (["A/a.jsonl?colour=red"], "unknown option 'colour'"),
    (["synthetic?n=many"], "option n takes a value of type int"),
    (["A/a.jsonl?streaming=maybe"], "true or false"),
    ([], "at least one source"),
])
def test_bad_specs_are_refused_clearly(files, args, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        CorpusSpec.parse([a.replace("A/", f"{files}/") for a in args])


def test_bad_spec_files_are_refused_clearly(files):
    (files / "bad.yaml").write_text("- a.jsonl\n")
    with pytest.raises(ValueError, match="mapping with a 'sources' list"):
        CorpusSpec.parse(str(files / "bad.yaml"))
    (files / "typo.yaml").write_text("sources: [a.jsonl]\nimage_cahce: /x\n")
    with pytest.raises(ValueError, match="unknown corpus spec keys.*image_cahce"):
        CorpusSpec.parse(str(files / "typo.yaml"))
    (files / "src.yaml").write_text("sources: [{path: a.jsonl, wieght: 2}]\n")
    with pytest.raises(ValueError, match="unknown source keys.*wieght"):
        CorpusSpec.parse(str(files / "src.yaml"))


def test_unknown_file_types_are_refused(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported data source"):
        CorpusSpec.parse(str(tmp_path / "x.csv"))
