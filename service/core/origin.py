"""Where a bundle comes from: its signature, checked against trusted keys, and a pinned digest.

A bundle's own hashes (``bundle.json``'s ``files``) prove it is whole, not who made it:
anyone who can rewrite the directory can rewrite the hashes too. The origin checks here
run before a bundle is loaded, and refuse it as a bad bundle (``BundleError``):

* **Signature.** ``model.sig`` in the bundle directory, written by ``python -m export sign``
  with OpenSSF's ``model-signing`` library (a Sigstore bundle over the hash of every file in
  the directory but the signature itself, signed with an elliptic-curve key). It verifies
  against one of ``TRUSTED_KEYS`` (public keys, PEM), or the bundle is refused. With
  ``REQUIRE_SIGNATURE`` an unsigned bundle is refused as well; without it, an unsigned
  bundle loads (and is logged), so that signing can be brought in bundle by bundle.
* **Digest.** ``sha256:`` and the sha256 of the bundle's ``bundle.json``. The manifest lists
  the sha256 of every other file and the load checks them, so this one digest pins the
  whole bundle, as an image digest pins an image. ``BUNDLE_DIGEST`` pins ``--bundle``;
  ``REPOSITORY_DIGESTS`` names a file of ``DIGEST  NAME/VERSION`` lines (read again at every
  load) that every version of a repository must be listed in.

``model-signing`` is optional (``requirements-signing.txt``): it is imported only when keys
are set, and a service without keys never needs it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.core.manifest import MANIFEST_NAME, SIGNATURE_FILE, BundleError, Manifest, load_verified
from service.settings import Settings

log = logging.getLogger(__name__)

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class OriginError(BundleError):
    """A bundle whose signature or digest does not hold: refused as any bad bundle is."""


@dataclass(frozen=True)
class Trust:
    """The origin checks to run: keys whose signatures are trusted, whether one is required, and pins."""

    keys: tuple[str, ...] = ()
    require_signature: bool = False
    digest: str = ""  # the one bundle's (BUNDLE_DIGEST)
    digests_file: str = ""  # a repository's (REPOSITORY_DIGESTS)

    @classmethod
    def of(cls, settings: Settings) -> Trust:
        return cls(
            settings.trusted_keys, settings.require_signature, settings.bundle_digest, settings.repository_digests
        )


def bundle_digest(directory: Path) -> str:
    """``sha256:`` + the sha256 of ``bundle.json``: with the hashes it lists, the whole bundle."""
    path = Path(directory) / MANIFEST_NAME
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror or exc}") from None


def read_digests(path: str) -> dict[str, str]:
    """``NAME/VERSION -> digest`` from a digests file: ``DIGEST  NAME/VERSION`` lines, ``#`` comments."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OriginError(f"REPOSITORY_DIGESTS {path}: cannot be read ({exc})") from None
    pins = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2 or not DIGEST.match(fields[0]):
            raise OriginError(f"REPOSITORY_DIGESTS {path} line {number}: expected 'sha256:<64 hex>  NAME/VERSION'")
        pins[fields[1].strip("/")] = fields[0]
    return pins


def check_keys(keys: Sequence[str]) -> str | None:
    """Why ``keys`` cannot be used (None: they can): a missing file, or model-signing not installed."""
    for key in keys:
        if not Path(key).is_file():
            return f"TRUSTED_KEYS: {key} is not a file"
    if keys:
        try:
            import model_signing  # noqa: F401
        except ImportError:
            return "TRUSTED_KEYS needs model-signing: pip install -r requirements-signing.txt"
    return None


def verify_signature(directory: Path, keys: Sequence[str]) -> None:
    """OriginError unless ``directory``'s signature verifies against one of ``keys``."""
    from model_signing import verifying

    signature = Path(directory) / SIGNATURE_FILE
    if signature.is_symlink() or not signature.is_file():
        raise OriginError(f"bundle {directory} has no signature {SIGNATURE_FILE}")
    reasons = []
    for key in keys:
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).verify(directory, signature)
            return
        except Exception as exc:  # the library raises ValueError, or its dependencies' own errors, for a bad one
            reason = _first_line(exc)
            if not reason.startswith("Key mismatch"):  # the key that signed it: the only reason that matters
                raise OriginError(f"bundle {directory}: signature {SIGNATURE_FILE} does not verify: {reason}") from None
            reasons.append(Path(key).name)
    raise OriginError(
        f"bundle {directory}: signature {SIGNATURE_FILE} is not by a trusted key (tried {', '.join(reasons)})"
    )


def _first_line(exc: Exception) -> str:
    """One short reason: for files that differ from what was signed, which ones and how (the library's own
    message spells out every digest)."""
    text = (str(exc).strip() or type(exc).__name__).replace("\\'", "'")
    if text.startswith("Signature mismatch"):
        found = [f"{name} changed" for name in re.findall(r"Hash mismatch for '([^']+)'", text)]
        for kind, how in (("Missing", "missing"), ("Extra", "not signed")):
            for names in re.findall(kind + r" files (?:found )?in model '[^']*': ([^\]\"']+)", text):
                found += [f"{name} {how}" for name in names.split(", ")]
        if found:
            return "the files are not the signed ones: " + ", ".join(sorted(found))
    return text.splitlines()[0][:300]


def check_origin(directory: Path, trust: Trust, *, pin: str = "") -> None:
    """OriginError when ``directory`` fails ``trust``'s signature checks or its digest is not ``pin``."""
    directory = Path(directory)
    if pin and (actual := bundle_digest(directory)) != pin:
        raise OriginError(f"bundle {directory}: digest {actual} is not the pinned {pin}")
    signed = (directory / SIGNATURE_FILE).exists()
    if trust.require_signature or (trust.keys and signed):
        verify_signature(directory, trust.keys)
    elif trust.keys:
        log.warning(
            "bundle is not signed; loaded as REQUIRE_SIGNATURE is off", extra={"fields": {"path": str(directory)}}
        )


def load_trusted(directory: Path, trust: Trust, *, repository: Path | None = None) -> Manifest:
    """The bundle's manifest once its origin (signature, digest) and its files hold, or BundleError. In a
    repository, the version's pin comes from the digests file, by its ``NAME/VERSION`` under ``repository``."""
    directory = Path(directory)
    pin = trust.digest
    if trust.digests_file and repository is not None:
        where = directory.relative_to(repository).as_posix()
        pin = read_digests(trust.digests_file).get(where, "")
        if not pin:
            raise OriginError(f"bundle {directory}: {where} is not listed in REPOSITORY_DIGESTS {trust.digests_file}")
    check_origin(directory, trust, pin=pin)
    return load_verified(directory)
