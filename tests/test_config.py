"""Pipelines as YAML: round trips, the stage registry, and errors that name file, field and fix."""

import textwrap

import pytest
import yaml
from stubs import StubFuse, StubRerank, StubRetriever, register_stubs

from stagegraph.pipeline.compose import Pipeline
from stagegraph.pipeline.config import ConfigError, apply_overrides
from stagegraph.pipeline.registry import available_types, stage_class

register_stubs()

HYBRID = """
name: hybrid
pipeline:
  - parallel:
      - {type: stub_retriever, name: a, k: 20}
      - {type: stub_retriever, name: b, seed: 3}
  - {type: stub_fuse, name: pool, k: 10}
  - {cutoff: 4, of: {type: stub_rerank, name: rr, flip: true}}
"""


def _write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_yaml_builds_the_same_graph_as_python(tmp_path):
    graph = Pipeline.from_yaml(_write(tmp_path, HYBRID))
    python = Pipeline(
        (StubRetriever("a", k=20) | StubRetriever("b", seed=3)) >> StubFuse("pool", k=10) >> StubRerank("rr", flip=True) % 4
    )
    assert graph.names == python.names
    assert [s.inputs for s in graph.steps] == [s.inputs for s in python.steps]
    assert [s.cutoff for s in graph.steps] == [s.cutoff for s in python.steps]
    assert [s.stage.fingerprint() for s in graph.steps] == [s.stage.fingerprint() for s in python.steps]


def test_python_graph_round_trips_through_yaml(tmp_path):
    graph = Pipeline((StubRetriever("a", k=20) | StubRetriever("b")) >> StubFuse("pool") >> StubRerank("rr") % 2)
    graph.save(tmp_path / "out.yaml")
    back = Pipeline.from_yaml(tmp_path / "out.yaml")
    assert back.to_config() == graph.to_config()
    assert yaml.safe_load((tmp_path / "out.yaml").read_text())["pipeline"][0]["parallel"][0] == {
        "type": "stub_retriever",
        "name": "a",
        "k": 20,
        "seed": 0,  # every setting is written, defaults included
        "sleep_ms": 0.0,
    }


def test_explicit_steps_form_with_inputs(tmp_path):
    path = _write(
        tmp_path,
        """
        steps:
          - {type: stub_retriever, name: a}
          - {type: stub_retriever, name: b, seed: 1}
          - {type: stub_fuse, name: pool, inputs: [a, b]}
        """,
    )
    graph = Pipeline.from_yaml(path)
    assert graph.step("pool").inputs == ("a", "b")
    assert Pipeline.from_config(graph.to_config()).names == graph.names


def test_unknown_stage_type_names_file_field_and_the_allowed_types(tmp_path):
    path = _write(tmp_path, "pipeline:\n  - {type: bm26, name: x}\n")
    with pytest.raises(ConfigError) as err:
        Pipeline.from_yaml(path)
    message = str(err.value)
    assert str(path) in message and "pipeline[0].type" in message and "'bm26'" in message
    assert "stub_retriever" in message  # lists what is registered


def test_bad_field_names_file_field_and_allowed_fields(tmp_path):
    path = _write(tmp_path, "pipeline:\n  - {type: stub_retriever, name: a, kk: 3}\n")
    with pytest.raises(ConfigError) as err:
        Pipeline.from_yaml(path)
    assert str(path) in str(err.value)
    assert "pipeline[0].kk: unknown field; allowed fields: name, k, seed, sleep_ms" in str(err.value)


def test_bad_value_is_reported_with_its_field(tmp_path):
    path = _write(tmp_path, "pipeline:\n  - {type: stub_retriever, name: a, k: many}\n")
    with pytest.raises(ConfigError, match=r"pipeline\[0\]\.k: Input should be a valid integer"):
        Pipeline.from_yaml(path)


def test_graph_errors_are_reported_with_the_file(tmp_path):
    path = _write(tmp_path, "pipeline:\n  - {type: stub_rerank, name: rr}\n")
    with pytest.raises(ConfigError, match=f"{path}.*'rr'.*nothing is upstream"):
        Pipeline.from_yaml(path)


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        Pipeline.from_yaml(_write(tmp_path, "pipeline: [ {type: x\n"))
    with pytest.raises(ConfigError, match="no such pipeline config file"):
        Pipeline.from_yaml(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="unknown top-level field"):
        Pipeline.from_yaml(_write(tmp_path, "pipline: []\n", "typo.yaml"))


def test_overrides_replace_fields_by_stage_name_or_type(tmp_path):
    graph = Pipeline.from_yaml(_write(tmp_path, HYBRID), overrides={"stub_rerank": {"flip": False}, "a": {"k": 5}})
    assert graph.step("rr").stage.config.flip is False
    assert graph.step("a").stage.config.k == 5
    with pytest.raises(ConfigError, match="no stage named or typed ghost"):
        apply_overrides(yaml.safe_load(HYBRID), {"ghost": {"k": 1}})


def test_registry_lists_types_and_resolves_them():
    assert stage_class("stub_fuse") is StubFuse
    assert "stub_retriever" in available_types()


class _PluginStage(StubRetriever):
    type_name = "plugin_retriever"


def test_plugins_register_through_the_entry_point_group(monkeypatch, tmp_path):
    import stagegraph.pipeline.registry as registry

    class FakeEntryPoint:
        name = "plugin_retriever"

        def load(self):
            return _PluginStage

    def fake_entry_points(group):
        assert group == registry.ENTRY_POINT_GROUP
        return [FakeEntryPoint()]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setitem(registry._REGISTRY, "stub_retriever", StubRetriever)
    graph = Pipeline.from_yaml(_write(tmp_path, "pipeline:\n  - {type: plugin_retriever, name: p, k: 3}\n"))
    assert isinstance(graph.step("p").stage, _PluginStage)
    registry._REGISTRY.pop("plugin_retriever", None)
