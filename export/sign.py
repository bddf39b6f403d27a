"""Sign a bundle with OpenSSF's model-signing: ``python -m export sign BUNDLE --key PRIVATE.pem``.

The signature (``model.sig``, a Sigstore bundle) covers the sha256 of every file in the
directory but itself, ``bundle.json`` included, and is made with an elliptic-curve private
key, offline. The service and the bulk command check it against their ``TRUSTED_KEYS``
before they load the bundle (``service.core.origin``). A bundle is checked whole before it is
signed: a key never vouches for a damaged one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from export.errors import BundleInvalid, InputNotFound, UsageError
from service.core.manifest import SIGNATURE_FILE, BundleError, load_verified
from service.core.origin import bundle_digest


def _signer(key: Path, password: str | None):  # noqa: ANN202 - model_signing's own type, imported lazily
    try:
        from model_signing import hashing, signing
    except ImportError:
        raise UsageError("signing needs model-signing: pip install -r requirements-signing.txt") from None
    if not key.is_file():
        raise InputNotFound(f"private key {key} does not exist")
    try:
        config = signing.Config().use_elliptic_key_signer(private_key=key, password=password)
    except Exception as exc:  # cryptography's own errors for a key it cannot read
        raise UsageError(f"{key}: not an elliptic-curve private key in PEM it can read ({exc})") from None
    # The signature is in the directory it signs: leave it out of what it covers.
    return config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE]))


def check_key(key: Path, password: str | None = None) -> None:
    """An ExportError now if ``key`` cannot sign (missing, unreadable, not elliptic-curve, model-signing absent)."""
    _signer(Path(key), password)


def sign_directory(directory: Path, key: Path, *, password: str | None = None) -> None:
    """Write ``directory/model.sig`` for its files as they are now, atomically."""
    directory = Path(directory)
    signer = _signer(Path(key), password)
    handle, temporary = tempfile.mkstemp(prefix=f".{directory.name}.sig.", dir=directory.parent)
    os.close(handle)
    try:
        signer.sign(directory, temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, directory / SIGNATURE_FILE)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def sign_bundle(directory: Path, key: Path, *, password: str | None = None) -> str:
    """Check ``directory`` against its manifest, sign it, and return its digest (``sha256:`` of bundle.json)."""
    try:
        load_verified(Path(directory))
    except BundleError as exc:
        raise BundleInvalid(str(exc)) from None
    sign_directory(directory, key, password=password)
    return bundle_digest(directory)
