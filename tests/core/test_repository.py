"""Reading a model repository's layout: models, versions, and whether a version changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.core.repository import Found, escapes, fingerprint, is_model_name, is_version, scan, versions


def bundle(directory: Path, manifest: str = "{}") -> Path:
    directory.mkdir(parents=True)
    (directory / "bundle.json").write_text(manifest)
    (directory / "model.onnx").write_bytes(b"graph")
    return directory


def test_layout_flat_and_numbered_newest_first(tmp_path):
    bundle(tmp_path / "sentiment")
    for version in ("1", "2", "10"):
        bundle(tmp_path / "intent" / version)
    (tmp_path / "intent" / "latest").mkdir()  # not a number: not a version
    (tmp_path / "intent" / "0").mkdir()  # versions start at 1
    bundle(tmp_path / "intent" / ".11.staging.x")  # the export stage's staging directory
    bundle(tmp_path / ".hidden")
    bundle(tmp_path / "bad name")  # cannot be a URL segment
    (tmp_path / "empty").mkdir()  # holds no version yet (the export creates parents first)
    (tmp_path / "README").write_text("not a model")
    found = scan(tmp_path)
    assert sorted(found) == ["intent", "sentiment"]
    assert [(item.name, item.version, item.path) for item in found["intent"]] == [
        ("intent", "10", tmp_path / "intent" / "10"),
        ("intent", "2", tmp_path / "intent" / "2"),
        ("intent", "1", tmp_path / "intent" / "1"),
    ]
    (flat,) = found["sentiment"]
    assert flat == Found("sentiment", "1", tmp_path / "sentiment", fingerprint(tmp_path / "sentiment"))


def test_a_half_copied_version_is_listed_so_that_it_can_be_refused(tmp_path):
    (tmp_path / "intent" / "1").mkdir(parents=True)
    (tmp_path / "intent" / "1" / "model.onnx").write_bytes(b"part")
    assert [item.version for item in versions(tmp_path, "intent")] == ["1"]


def test_fingerprint_follows_the_manifest_and_every_file(tmp_path):
    directory = bundle(tmp_path / "m", manifest='{"files": {"a": "1"}}')
    first = fingerprint(directory)
    assert first == fingerprint(directory)
    (directory / "bundle.json").write_text('{"files": {"a": "2"}}')
    os.utime(directory / "bundle.json", ns=(0, 0))
    second = fingerprint(directory)
    assert second != first
    (directory / "model.onnx").write_bytes(b"grapH")  # same size, new content: the mtime changes
    os.utime(directory / "model.onnx", ns=(1, 1))
    assert fingerprint(directory) != second
    third = fingerprint(directory)
    (directory / "extra.bin").write_bytes(b"")
    assert fingerprint(directory) != third
    assert fingerprint(tmp_path / "missing") == ""


@pytest.fixture
def linked(tmp_path):
    """A repository with links that stay inside it and links that lead out, at every level."""
    root, elsewhere = tmp_path / "repository", tmp_path / "elsewhere"
    bundle(elsewhere / "bundle")
    bundle(root / "real" / "1")
    (root / "alias").symlink_to(root / "real")  # inside: followed
    (root / "outside").symlink_to(elsewhere / "bundle")  # a model directory that leads out
    (root / "versions" / "1").parent.mkdir(parents=True)
    (root / "versions" / "1").symlink_to(elsewhere / "bundle")  # a version directory that leads out
    bundle(root / "versions" / "2")
    (root / "manifest").mkdir()
    (root / "manifest" / "bundle.json").symlink_to(elsewhere / "bundle" / "bundle.json")  # bundle.json leads out
    (root / "manifest" / "model.onnx").write_bytes(b"graph")
    (root / "loop").symlink_to(root / "loop")
    return root


def test_links_are_followed_only_inside_the_repository(linked):
    found = scan(linked)
    assert {name: [item.version for item in items] for name, items in found.items()} == {
        "alias": ["1"],
        "real": ["1"],
        "versions": ["2"],
    }
    for name in ("outside", "versions", "manifest", "loop"):
        assert [item.version for item in versions(linked, name)] == (["2"] if name == "versions" else [])
    assert escapes(linked, linked / "outside") and escapes(linked, linked / "loop")
    assert not escapes(linked, linked / "alias" / "1")


@pytest.mark.parametrize(
    "name, model, version",
    [
        pytest.param("intent", True, False, id="name"),
        pytest.param("a.b_c-1", True, False, id="punctuation"),
        pytest.param("12", True, True, id="number"),
        pytest.param("nl\n", False, False, id="trailing-newline"),
        pytest.param("1\n", False, False, id="version-newline"),
        pytest.param("../x", False, False, id="parent"),
        pytest.param("-x", False, False, id="leading-dash"),
        pytest.param("0", True, False, id="version-zero"),
    ],
)
def test_names_and_versions_match_whole(name, model, version):
    assert (is_model_name(name), is_version(name)) == (model, version)


def test_a_trailing_newline_is_no_model_or_version(tmp_path):
    bundle(tmp_path / "nl\n")
    bundle(tmp_path / "intent" / "1\n")
    bundle(tmp_path / "intent" / "2")
    assert {name: [item.version for item in items] for name, items in scan(tmp_path).items()} == {"intent": ["2"]}
