"""Signatures and pinned digests checked before a bundle loads: real keys, ``python -m export sign``, the real
server (one bundle and a polled repository) and the bulk command. A changed byte, a removed file and a swapped
signature are all refused; a good signature serves."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from export.cli import main as export_main
from service.core.origin import Trust, check_keys, load_trusted, read_digests
from tests.conftest import ROOT, needs_export
from tests.core.test_registry import POLL, TEI, V1, V2, export, index, labels, place, serve
from tests.helpers import SERVE_PYTHON, ServerProcess, make_key_pair, require_serve_env, wait_for

pytestmark = needs_export


def sign(bundle: Path, key: Path) -> str:
    """Sign through the real CLI; the bundle's digest it prints."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert export_main(["sign", str(bundle), "--key", str(key)]) == 0
    return out.getvalue().split("digest ")[1].strip()


def tampered(signed: Path, target: Path, how: str, other: Path) -> Path:
    """A copy of ``signed`` with one change: a byte of the graph, a file gone, or another bundle's signature."""
    shutil.copytree(signed, target)
    if how == "byte":
        graph = bytearray((target / "model.onnx").read_bytes())
        graph[len(graph) // 2] ^= 0x01
        (target / "model.onnx").write_bytes(bytes(graph))
    elif how == "removed":
        (target / "reference.json").unlink()
    else:
        shutil.copyfile(other / "model.sig", target / "model.sig")
    return target


REASONS = {
    "byte": "does not verify: the files are not the signed ones: model.onnx changed",
    "removed": "does not verify: the files are not the signed ones: reference.json missing",
    # The other bundle's signature: its files' hashes, not these (bundle.json first of those that differ).
    "swapped": "does not verify: the files are not the signed ones: bundle.json changed, model.onnx changed",
}


@pytest.fixture(scope="module")
def signed(tiny_bundle, tmp_path_factory):
    """Two bundles signed with one key (the second, whose labels are V2, lends its signature to be swapped in),
    and the keys."""
    from tests import tiny_models

    root = tmp_path_factory.mktemp("signed")
    checkpoint = tiny_models.build("bert", root / "second-checkpoint", labels=sorted(V2), seed=1)
    second_bundle = export(checkpoint, root / "second-bundle")
    private, public = make_key_pair(root, "release")
    _, stranger = make_key_pair(root, "stranger")
    first = shutil.copytree(tiny_bundle("bert"), root / "first")
    second = shutil.copytree(second_bundle, root / "second")
    digest = sign(first, private)
    sign(second, private)
    return {
        "root": root,
        "private": private,
        "public": public,
        "stranger": stranger,
        "first": first,
        "second": second,
        "digest": digest,
    }


def run_service(*args: str) -> subprocess.CompletedProcess:
    """``python -m service`` expected to stop before it serves: its exit code and its one line."""
    require_serve_env()
    return subprocess.run(
        [str(SERVE_PYTHON), "-m", "service", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("how", ["byte", "removed", "swapped"])
def test_the_server_refuses_a_tampered_bundle_at_start(signed, tmp_path, how):
    bundle = tampered(signed["first"], tmp_path / "bundle", how, signed["second"])
    done = run_service("--bundle", str(bundle), "--trusted-keys", str(signed["public"]))
    assert done.returncode == 3
    err = done.stderr.decode()
    assert err.startswith(f"error: bundle {bundle}: signature model.sig {REASONS[how]}") and err.count("\n") == 1


def test_a_good_signature_and_digest_serve_and_anything_else_is_refused(signed, tmp_path, tiny_bundle):
    keys = ["--trusted-keys", f"{signed['stranger']},{signed['public']}", "--require-signature", "true"]
    server = ServerProcess(signed["first"], *keys, "--bundle-digest", signed["digest"])
    try:
        server.wait_ready()
        assert labels(httpx.post(server.url + "/predict", json=TEI)) <= V1
    finally:
        server.stop()
    unsigned = tiny_bundle("bert")
    done = run_service("--bundle", str(unsigned), *keys)
    assert (done.returncode, done.stderr.decode()) == (
        3,
        f"error: bundle {unsigned} has no signature model.sig\n",
    )
    done = run_service("--bundle", str(signed["first"]), "--trusted-keys", str(signed["stranger"]))
    assert done.stderr.decode() == (
        f"error: bundle {signed['first']}: signature model.sig is not by a trusted key (tried stranger.pub)\n"
    )
    wrong = "sha256:" + "0" * 64
    done = run_service("--bundle", str(signed["first"]), "--bundle-digest", wrong)
    assert (done.returncode, done.stderr.decode()) == (
        3,
        f"error: bundle {signed['first']}: digest {signed['digest']} is not the pinned {wrong}\n",
    )
    done = run_service("--bundle", str(signed["first"]), "--trusted-keys", str(tmp_path / "nowhere.pub"))
    assert (done.returncode, done.stderr.decode()) == (
        2,
        f"error: TRUSTED_KEYS: {tmp_path / 'nowhere.pub'} is not a file\n",
    )


def test_a_repository_keeps_serving_while_bad_versions_are_refused(signed, tmp_path, tiny_bundle):
    """Versions 2 to 5 each fail one check and are refused while version 1 answers; version 6, signed and
    listed, replaces it."""
    repository = tmp_path / "repository"
    place(signed["first"], repository / "alpha" / "1")
    digests = tmp_path / "digests.txt"
    digests.write_text(f"# released\n{signed['digest']}  alpha/1\n")
    server = serve(
        repository,
        "--model-control", "poll", "--poll-interval", str(POLL),
        "--trusted-keys", str(signed["public"]), "--require-signature", "true",
        "--repository-digests", str(digests),
    )  # fmt: skip
    try:
        predict = lambda: httpx.post(server.url + "/predict", json=TEI)  # noqa: E731
        assert labels(predict()) <= V1
        root = tmp_path / "made"
        root.mkdir()
        second = signed["second"]
        digest_of = lambda path: "sha256:" + hashlib.sha256((path / "bundle.json").read_bytes()).hexdigest()  # noqa: E731
        cases = {
            "2": (tampered(second, root / "2", "byte", signed["first"]), REASONS["byte"]),
            "3": (tampered(second, root / "3", "removed", signed["first"]), REASONS["removed"]),
            "4": (tampered(second, root / "4", "swapped", signed["first"]), REASONS["swapped"]),
            "5": (tiny_bundle("roberta"), "has no signature model.sig"),
        }
        for version, (bundle, reason) in cases.items():
            with digests.open("a") as file:
                file.write(f"{digest_of(bundle)}  alpha/{version}\n")
            place(bundle, repository / "alpha" / version)
            wait_for(lambda version=version: index(server)[0]["version"] == version, f"version {version} in the index")
            refused, serving = index(server)[0], index(server)[-1]
            assert refused["state"] == "UNAVAILABLE"
            where = repository / "alpha" / version
            if reason.startswith("has"):
                assert refused["reason"] == f"bundle {where} {reason}"
            else:
                assert refused["reason"].startswith(f"bundle {where}: signature model.sig {reason}")
            assert serving == {"name": "alpha", "version": "1", "state": "READY", "reason": ""}
            assert labels(predict()) <= V1
        # Signed well but not listed: refused until the digests file lists it.
        place(second, repository / "alpha" / "6")
        wait_for(lambda: index(server)[0]["version"] == "6", "version 6 in the index")
        assert index(server)[0]["reason"] == (
            f"bundle {repository / 'alpha' / '6'}: alpha/6 is not listed in REPOSITORY_DIGESTS {digests}"
        )
        assert labels(predict()) <= V1
        with digests.open("a") as file:
            file.write(f"{digest_of(second)}  alpha/6\n")
        (repository / "alpha" / "6" / "model.sig").touch()  # a change the scan sees: the version is read again
        wait_for(lambda: labels(predict()) <= V2, "version 6 answering")
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["byte", "removed", "swapped"])
def test_the_bulk_command_refuses_a_tampered_bundle(signed, tmp_path, capsys, how):
    from service.bulk.cli import main as bulk_main

    bundle = tampered(signed["first"], tmp_path / "bundle", how, signed["second"])
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "hello"}\n')
    out = tmp_path / "out.jsonl"
    argv = [str(source), "-o", str(out), "--trusted-key", str(signed["public"])]
    assert bulk_main([*argv, "--bundle", str(bundle)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: bundle {bundle}: signature model.sig {REASONS[how]}") and err.count("\n") == 1
    assert not out.exists()
    assert bulk_main([*argv, "--bundle", str(signed["first"]), "--require-signature", "--progress", "off"]) == 0
    assert out.exists()


def test_the_service_runs_without_model_signing_until_keys_are_set(monkeypatch, signed, tiny_bundle):
    monkeypatch.setitem(sys.modules, "model_signing", None)  # an install without requirements-signing.txt
    assert check_keys(()) is None
    assert load_trusted(tiny_bundle("bert"), Trust()).model_id
    assert check_keys([str(signed["public"])]) == (
        "TRUSTED_KEYS needs model-signing: pip install -r requirements-signing.txt"
    )


def test_a_digests_file_is_read_strictly(tmp_path):
    from service.core.origin import OriginError

    path = tmp_path / "digests.txt"
    digest = "sha256:" + "a" * 64
    path.write_text(f"# pins\n\n{digest}  alpha/1\n{digest}  beta  # a flat model\n")
    assert read_digests(str(path)) == {"alpha/1": digest, "beta": digest}
    path.write_text(f"{digest}\n")
    with pytest.raises(OriginError, match=r"digests.txt line 1: expected 'sha256:<64 hex>  NAME/VERSION'"):
        read_digests(str(path))


def test_a_ray_data_scorer_checks_the_origin_as_the_bulk_command_does(signed, tmp_path):
    from service.bulk.ray_data import BundleScorer
    from service.core.origin import OriginError

    bundle = tampered(signed["first"], tmp_path / "bundle", "byte", signed["second"])
    with pytest.raises(OriginError, match=r"signature model.sig does not verify: .* model.onnx changed$"):
        BundleScorer(str(bundle), trusted_keys=(str(signed["public"]),))
    with pytest.raises(OriginError, match=r"is not the pinned sha256:0{64}$"):
        BundleScorer(str(signed["first"]), bundle_digest="sha256:" + "0" * 64)
    scorer = BundleScorer(str(signed["first"]), trusted_keys=(str(signed["public"]),), require_signature=True)
    assert scorer.scorer.manifest.model_id
