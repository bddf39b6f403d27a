"""``python -m export sign`` and ``--sign-key``: real keys, the real CLI, and the signature checked as the
service checks it (``service.core.origin``)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from export.cli import main
from service.core.manifest import load_verified
from service.core.origin import OriginError, Trust, check_origin
from tests.conftest import needs_export
from tests.helpers import make_key_pair

pytestmark = needs_export


def test_sign_writes_a_signature_the_trusted_key_verifies(tiny_bundle, tmp_path, capsys):
    bundle = shutil.copytree(tiny_bundle("bert"), tmp_path / "bundle")
    private, public = make_key_pair(tmp_path, "release")
    _, other = make_key_pair(tmp_path, "other")
    assert main(["sign", str(bundle), "--key", str(private)]) == 0
    digest = "sha256:" + hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest()
    assert capsys.readouterr().out == f"signed: {bundle / 'model.sig'}; digest {digest}\n"
    check_origin(bundle, Trust((str(public),), require_signature=True), pin=digest)
    load_verified(bundle)  # the signature sits beside the files the manifest lists
    assert main(["verify", str(bundle)]) == 0
    with pytest.raises(OriginError, match=r"model.sig is not by a trusted key \(tried other.pub\)$"):
        check_origin(bundle, Trust((str(other),)))


def test_sign_refuses_a_damaged_bundle_and_a_key_it_cannot_use(tiny_bundle, tmp_path, capsys):
    bundle = shutil.copytree(tiny_bundle("bert"), tmp_path / "bundle")
    private, public = make_key_pair(tmp_path, "release")
    assert main(["sign", str(bundle), "--key", str(tmp_path / "missing.pem")]) == 3
    assert capsys.readouterr().err == f"error: private key {tmp_path / 'missing.pem'} does not exist\n"
    assert main(["sign", str(bundle), "--key", str(public)]) == 2  # the public half cannot sign
    err = capsys.readouterr().err
    assert err.startswith(f"error: {public}: not an elliptic-curve private key in PEM it can read (")
    assert err.count("\n") == 1
    (bundle / "tokenizer.json").write_text("{}")
    assert main(["sign", str(bundle), "--key", str(private)]) == 12
    assert "failed its integrity check: tokenizer.json: sha256" in capsys.readouterr().err
    assert not (bundle / "model.sig").exists()


def test_export_signs_with_sign_key(tiny_checkpoint, tmp_path, capsys):
    private, public = make_key_pair(tmp_path, "release")
    out = tmp_path / "bundle"
    argv = ["--model", str(tiny_checkpoint("bert")), "--out", str(out), "--variant", "fp32", "--quiet"]
    assert main([*argv, "--sign-key", str(tmp_path / "missing.pem")]) == 3  # before any of the export's work
    assert not out.exists()
    capsys.readouterr()
    assert main([*argv, "--sign-key", str(private)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"signed: {out / 'model.sig'}; digest sha256:")
    check_origin(out, Trust((str(public),), require_signature=True))
    assert sorted(path.name for path in out.iterdir()) == [
        "bundle.json",
        "model.onnx",
        "model.sig",
        "reference.json",
        "tokenizer.json",
    ]
