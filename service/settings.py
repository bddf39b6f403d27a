"""Service settings: every one is a ``--flag`` and an env var of the same name.

``--max-batch-tokens 8192`` and ``MAX_BATCH_TOKENS=8192`` mean the same; a flag
beats the environment, the environment beats the default.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path


class SettingsError(ValueError):
    """A setting with a value it cannot take; the message names the setting."""


MODEL_CONTROLS = ("none", "poll", "explicit")
VERSION_POLICIES = ("latest", "all")
AGGREGATION_SETTINGS = ("auto", "mean", "max")
ENGINES = ("auto", "onnxruntime", "openvino")
# The settings a repository's NAME/serving.json may set for one model.
PER_MODEL = ("windows", "window_overlap", "max_windows", "aggregation")


@dataclass(frozen=True)
class Settings:
    bundle: str = "bundles/default"
    repository: str = ""
    model_dir: str = ""
    default_model: str = ""
    model_control: str = "none"
    poll_interval: float = 5.0
    version_policy: str = "latest"
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 0
    grpc_max_streams: int = 8
    model_name: str = "classifier"
    engine: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    max_batch_tokens: int = 4096
    max_batch_size: int = 64
    max_wait_ms: float = 0.0
    max_queue_size: int = 1024
    cache_size: int = 0
    cache_bytes: int = 64 * 1024 * 1024
    max_inputs: int = 64
    max_tokenize_tokens: int = 8192
    max_body_bytes: int = 524_288
    api_keys: tuple[str, ...] = ()
    high_priority_keys: tuple[str, ...] = ()
    cors_allow_origins: tuple[str, ...] = ()
    drain_timeout: float = 20.0
    request_timeout: float = 0.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_header_bytes: int = 32768
    max_connections: int = 256
    log_level: str = "info"
    log_inputs: bool = False
    on_failed_verification: str = "refuse"
    max_reference_bytes: int = 4 * 1024 * 1024
    max_reference_rows: int = 2000
    require_reference_set: bool = False
    gate_fp32_max_logit_diff: float = 1e-4
    gate_int8_min_agreement: float = 0.99
    gate_int8_confident_margin: float = 0.1
    gate_int8_max_prob_diff: float = 0.05
    gate_int8_max_value_diff: float = 0.05
    drift_window: int = 1000
    low_confidence: float = 0.5
    shadow: tuple[str, ...] = ()
    shadow_fraction: float = 0.1
    shadow_cpu_budget: float = 0.25
    shadow_threads: int = 1
    windows: bool = False
    window_overlap: int = 32
    max_windows: int = 32
    aggregation: str = "auto"
    long_input_tokens: int = 64
    long_batch_tokens: int = 256
    trusted_keys: tuple[str, ...] = ()
    require_signature: bool = False
    bundle_digest: str = ""
    repository_digests: str = ""

    def __post_init__(self) -> None:
        positive = (
            "port",
            "max_batch_tokens",
            "max_batch_size",
            "max_queue_size",
            "max_inputs",
            "max_tokenize_tokens",
            "max_body_bytes",
            "cache_bytes",
            "max_header_bytes",
            "max_connections",
            "grpc_max_streams",
            "drift_window",
            "shadow_threads",
            "max_windows",
            "long_input_tokens",
            "long_batch_tokens",
            "max_reference_bytes",
            "max_reference_rows",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        not_negative = (
            "intra_op_threads",
            "inter_op_threads",
            "max_wait_ms",
            "drain_timeout",
            "request_timeout",
            "cache_size",
            "gate_fp32_max_logit_diff",
            "gate_int8_confident_margin",
            "gate_int8_max_prob_diff",
            "gate_int8_max_value_diff",
        )
        for name in (*not_negative, "window_overlap"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{_flag(name)} must not be negative, got {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{_flag(name)} must be greater than 0, got {getattr(self, name)}")
        if self.port > 65535:
            raise SettingsError(f"--port must be at most 65535, got {self.port}")
        if not 0 <= self.grpc_port <= 65535:
            raise SettingsError(f"--grpc-port must be between 0 (off) and 65535, got {self.grpc_port}")
        if self.grpc_port == self.port:
            raise SettingsError(f"--grpc-port must differ from --port, both are {self.port}")
        if self.model_control not in MODEL_CONTROLS:
            raise SettingsError(f"--model-control must be none, poll or explicit, got {self.model_control!r}")
        if self.model_control != "none" and not self.repository:
            raise SettingsError(f"--model-control {self.model_control} needs --repository")
        if self.poll_interval <= 0:
            raise SettingsError(f"--poll-interval must be greater than 0, got {self.poll_interval}")
        if self.version_policy not in VERSION_POLICIES:
            raise SettingsError(f"--version-policy must be latest or all, got {self.version_policy!r}")
        if not 0 <= self.gate_int8_min_agreement <= 1:
            raise SettingsError(
                f"--gate-int8-min-agreement must be between 0 and 1, got {self.gate_int8_min_agreement}"
            )
        unknown = sorted(set(self.high_priority_keys) - set(self.api_keys))
        if unknown:
            raise SettingsError(
                f"--high-priority-keys names {len(unknown)} key(s) that are not in --api-keys: every key allowed "
                "high priority must be an API key"
            )
        if not 0 <= self.low_confidence <= 1:
            raise SettingsError(f"--low-confidence must be between 0 and 1, got {self.low_confidence}")
        for name in ("shadow_fraction", "shadow_cpu_budget"):
            if not 0 < getattr(self, name) <= 1:
                raise SettingsError(f"{_flag(name)} must be greater than 0 and at most 1, got {getattr(self, name)}")
        if self.shadow and not self.repository:
            raise SettingsError("--shadow needs --repository: a shadow is another version of a repository's model")
        for entry in self.shadow:
            name, _, version = entry.rpartition(":")
            if not name or not version.isdigit() or version.startswith("0"):
                raise SettingsError(f"--shadow takes MODEL:VERSION entries, as intent:3; got {entry!r}")
        names = [entry.rpartition(":")[0] for entry in self.shadow]
        if len(set(names)) != len(names):
            raise SettingsError("--shadow names a model twice: a model has at most one shadow version")
        if self.aggregation not in AGGREGATION_SETTINGS:
            raise SettingsError(f"--aggregation must be auto, mean or max, got {self.aggregation!r}")
        if self.engine not in ENGINES:
            raise SettingsError(f"--engine must be auto, onnxruntime or openvino, got {self.engine!r}")
        if self.on_failed_verification not in ("refuse", "warn"):
            raise SettingsError(f"--on-failed-verification must be refuse or warn, got {self.on_failed_verification!r}")
        if self.require_signature and not self.trusted_keys:
            raise SettingsError("--require-signature needs --trusted-keys: the public keys whose signatures to accept")
        if self.bundle_digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", self.bundle_digest):
            raise SettingsError(f"--bundle-digest takes sha256:<64 lowercase hex>, got {self.bundle_digest!r}")
        if self.bundle_digest and self.repository:
            raise SettingsError("--bundle-digest pins --bundle; a repository's digests go in --repository-digests")
        if self.repository_digests and not self.repository:
            raise SettingsError("--repository-digests needs --repository")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"--log-level must be debug, info, warning or error, got {self.log_level!r}")


HELP = {
    "bundle": "bundle directory written by 'python -m export'",
    "model_dir": "a directory holding a bundle or a repository, whichever it is (a bundle.json in it makes it a "
    "bundle): how KServe mounts a model at /mnt/models. Overrides --bundle and --repository",
    "repository": "model repository directory: each subdirectory NAME holds a bundle, or numbered version "
    "directories NAME/1, NAME/2, ... (newest serves); serves every model in it instead of --bundle",
    "default_model": "model the unprefixed routes (/, /predict, ...) serve in a repository; empty = the only model "
    "(with several, those routes then answer 404: set it when the repository may hold more than one)",
    "model_control": "none (serve what the repository holds at start), poll (rescan every --poll-interval seconds: "
    "load new or changed bundles, unload removed ones) or explicit (the repository API /v2/repository/... loads and "
    "unloads models; it needs API_KEYS)",
    "poll_interval": "seconds between repository scans with --model-control poll. Each scan reads every bundle.json "
    "and stats the files; a changed bundle is hash-checked in full before it loads",
    "version_policy": "latest (serve the newest version that verifies) or all (serve every version that verifies, "
    "each at /v2/models/NAME/versions/N; unversioned routes get the newest)",
    "host": "interface to bind; 127.0.0.1 keeps the service local, 0.0.0.0 exposes it (the image uses 0.0.0.0)",
    "port": "TCP port",
    "grpc_port": "TCP port of the Open Inference Protocol gRPC service (KServe's GRPCInferenceService, as "
    "tritonclient.grpc speaks it); 0 turns it off. Needs grpcio (requirements-grpc.txt)",
    "grpc_max_streams": "concurrent calls one gRPC connection may carry (HTTP/2 streams); a client's further calls "
    "wait on its side. Connections are capped by MAX_CONNECTIONS and calls in progress by MAX_CONNECTIONS too, so "
    "the messages held stay within MAX_CONNECTIONS x MAX_BODY_BYTES, as over HTTP",
    "model_name": "model name of --bundle in Open Inference Protocol URLs (/v2/models/NAME) and metrics; in a "
    "repository each model is named after its directory",
    "engine": "what runs the graph: onnxruntime (every CPU, every bundle), openvino (the bundle's fp32 graph in "
    "bf16 where the CPU has bf16 units, else f32; needs requirements-openvino.txt) or auto: openvino when it is "
    "installed, the bundle carries its graph and a reference set, and the CPU has amx_bf16 or avx512_bf16, else "
    "onnxruntime. The choice reads CPU flags and versions, never timings; the reference set then proves it at load, "
    "and an auto choice that fails it falls back to onnxruntime (logged, counted, shown in /info), while an explicit "
    "openvino that fails is refused like any failed re-verification",
    "intra_op_threads": "threads per batch (onnxruntime's intra-op threads, OpenVINO's inference threads); "
    "0 = one per core this process may use (CPU affinity and "
    "cgroup quota). More threads cut the latency of one large batch but contend with tokenization and the event loop",
    "inter_op_threads": "onnxruntime threads running independent graph nodes; 1 suits encoder models",
    "max_batch_tokens": "padded tokens per batch (batch size x longest input). Peak memory grows with it "
    "(about 55 KiB a token for the default MiniLM at 256 tokens: docs/memory.md); larger batches of long texts "
    "gain little throughput on CPU and each one takes longer",
    "max_batch_size": "inputs per batch, whatever their length",
    "max_wait_ms": "how long the first queued input waits for others to join its batch. "
    "Higher values batch more under load and add that much latency when idle",
    "max_queue_size": "inputs admitted (queued, tokenizing or running) before new requests get 429 with "
    "Retry-After, checked before any work is spent; bounds memory and latency under overload",
    "cache_size": "entries in the response cache (one per distinct text and options); 0 turns it off. Repeated "
    "texts then skip the queue and the model, at the cost of memory",
    "cache_bytes": "byte bound of the response cache (texts and logits)",
    "max_inputs": "inputs per request",
    "max_tokenize_tokens": "tokens one /tokenize answer may list, over all its texts (it lists every token, "
    "untruncated, about 80 bytes of JSON each); more get 422. Bounds the answer's size and the memory and time "
    "spent building it",
    "max_body_bytes": "request body limit, counted as the body streams in. Every connection may hold about "
    "twice this (the bytes and the parsed texts), so MAX_CONNECTIONS x 2 x MAX_BODY_BYTES bounds the memory of "
    "bodies in flight",
    "api_keys": "comma-separated bearer keys; empty disables authentication. Health, metrics and docs stay open",
    "high_priority_keys": "comma-separated API keys (each one also in API_KEYS) whose calls may ask for high "
    "priority (x-priority: high, the priority parameter 1); a call from any other caller asking for it gets 403 "
    "(PERMISSION_DENIED over gRPC). Empty: every caller that passes authentication may ask for it, which on a "
    "server without API_KEYS is everyone; set it wherever callers are not all trusted, since high-priority work "
    "is batched before everyone else's",
    "cors_allow_origins": "comma-separated origins allowed by CORS; empty disables CORS",
    "request_timeout": "seconds a request without a deadline of its own (gRPC's deadline, the x-request-timeout "
    "header, the Open Inference Protocol's timeout parameter) may wait for its inputs to start; past it they are "
    "dropped unrun and the request answered 504 (DEADLINE_EXCEEDED over gRPC). 0: no deadline",
    "drain_timeout": "seconds to finish in-flight requests after SIGTERM before exiting; requests still running "
    "then get 503 unavailable",
    "header_timeout": "seconds a client may take to send the request line and headers, from connecting (or from the "
    "first byte of a later request on the connection); then 408 and close. Lower values free connection slots "
    "held by stalled clients sooner but cut off clients on very slow links",
    "body_timeout": "seconds the server waits for the next chunk of a request body; then 408 and close. A stalled "
    "upload delays a SIGTERM drain by at most this long. Lower values free slots sooner but cut off slow uploaders",
    "max_header_bytes": "request line plus headers, in bytes; larger heads get 431 and the connection closes. "
    "Each open connection may hold this much while its head arrives",
    "max_connections": "concurrent connections; a request on a connection beyond it gets 503 and the connection "
    "closes. Higher values admit more clients but each may hold up to MAX_BODY_BYTES while its body is read",
    "log_level": "debug, info, warning or error",
    "log_inputs": "include input texts in debug logs (off: logs never contain user text)",
    "drift_window": "inputs the drift gauges (classifier_drift_*_psi) compare with the bundle's reference set: "
    "the last this many. Larger windows move slower and are less noisy",
    "low_confidence": "top score under which an input counts in classifier_low_confidence_inputs",
    "shadow": "comma-separated MODEL:VERSION entries of a repository: that version of that model is a shadow. "
    "It is loaded beside the serving versions (which are then the others), receives SHADOW_FRACTION of the "
    "inputs the newest of them answers, off the request's path, and never answers a client; the "
    "classifier_shadow_* metrics compare the two. With MODEL_CONTROL=explicit the repository API's load "
    "sets, changes or clears it (parameters shadow_version and shadow_fraction)",
    "shadow_fraction": "share of the serving version's inputs also run on its shadow version",
    "shadow_cpu_budget": "share of wall-clock time shadow versions may spend tokenizing and running, refilled "
    "continuously; picked inputs beyond it are skipped, as they are whenever inputs wait in the serving queue",
    "shadow_threads": "onnxruntime threads of a shadow version's session; one leaves the serving session the "
    "other cores while a shadow batch runs",
    "windows": "read an input longer than the model's max length whole, in overlapping windows of that length "
    "whose answers are combined into one (docs/long-texts.md), instead of its first window only. A request "
    "may ask either way (windows: true/false); a repository's NAME/serving.json may set it per model. Each "
    "window costs what a text of the max length costs",
    "window_overlap": "tokens consecutive windows share, so no passage is only ever read cut in two; more "
    "overlap costs more windows. At most half a window's room is used",
    "max_windows": "windows one input may take; a longer input is cut to this many (reported as truncated), "
    "or refused with 413 when the request sets truncate to false",
    "aggregation": "how the windows' scores become one: mean (weighted by tokens), max (each label's largest), "
    "or auto (max for sigmoid models: multi-label, one-logit, rerankers; mean for the others)",
    "long_input_tokens": "inputs longer than this many tokens (long texts, windows) queue in a lane of their own, "
    "run by a worker of its own that yields to short inputs (for at most 0.2 s a batch), so a short query never "
    "waits for long work to end",
    "long_batch_tokens": "padded tokens in one batch of long inputs (at most MAX_BATCH_TOKENS). Small batches keep "
    "the cores long work takes from short queries brief (about 28 ms a 256-token window for the default model on "
    "2 cores); larger batches of long inputs gain little throughput on CPU",
    "trusted_keys": "comma-separated paths of public keys (elliptic-curve, PEM) whose signatures are trusted: a "
    "signed bundle (model.sig, from 'python -m export sign') loads only if its signature verifies against one, "
    "checked before it loads. Needs requirements-signing.txt (model-signing); empty: signatures are not checked",
    "require_signature": "refuse a bundle that is not signed by one of TRUSTED_KEYS (a repository keeps the version "
    "that serves; a single --bundle exits 3). Off: an unsigned bundle loads with a warning, a badly signed one "
    "is still refused",
    "bundle_digest": "pin --bundle to this digest, sha256:<hex> of its bundle.json (which lists the sha256 of "
    "every other file; 'python -m export sign' prints it, and so does sha256sum bundle.json); another bundle is "
    "refused. Empty: not pinned",
    "repository_digests": "a file of 'sha256:<hex>  NAME/VERSION' lines (NAME alone for a model whose directory "
    "is its bundle), read again at every load: a repository's version loads only when it is listed with its "
    "bundle.json's digest. Empty: not pinned",
    "max_reference_bytes": "largest reference set (reference.json) a bundle may carry; a larger one is refused "
    "before it is read, as a failed re-verification is. Bounds the memory and time a load spends on it",
    "max_reference_rows": "most inputs a bundle's reference set may hold; more are refused before any is run. "
    "The set runs at every load, in batches within MAX_BATCH_TOKENS and MAX_BATCH_SIZE",
    "require_reference_set": "refuse a bundle that carries no reference set (exported with --no-reference-set, "
    "or with it deleted and the hashes rewritten), as a failed re-verification is",
    "gate_fp32_max_logit_diff": "the gate's floor: a bundle whose recorded fp32_max_logit_diff tolerance is larger "
    "is refused. A bundle's tolerances are its own record, so without a floor a rewritten bundle could relax them",
    "gate_int8_min_agreement": "the gate's floor: a bundle whose recorded int8_min_agreement is lower is refused",
    "gate_int8_confident_margin": "the gate's floor: a bundle whose recorded int8_confident_margin is larger (fewer "
    "inputs held to agree) is refused",
    "gate_int8_max_prob_diff": "the gate's floor: a bundle whose recorded int8_max_prob_diff is larger is refused",
    "gate_int8_max_value_diff": "the gate's floor: a bundle whose recorded int8_max_value_diff is larger is refused",
    "on_failed_verification": "what happens to a bundle whose reference set, run on this CPU at load, falls outside "
    "the export's gate: refuse (not served: a repository keeps the version serving; a single --bundle exits 5) "
    "or warn (served anyway, logged and shown in /info and the classifier_verified metric). warn is unsafe: the "
    "model may answer differently from the one that was verified",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return name.upper()


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def parse_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _converter(default: object):
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, tuple):
        return parse_list
    return type(default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve an ONNX text-classifier bundle over REST and the Open Inference Protocol. "
        "Every flag can also be set by the env var of the same name in upper case (e.g. MAX_BATCH_TOKENS).",
    )
    for field in fields(Settings):
        parser.add_argument(
            _flag(field.name),
            dest=field.name,
            default=None,
            metavar=_env(field.name),
            help=f"{HELP[field.name]} (default: {_show(field.default)})",
        )
    return parser


def _show(default: object) -> str:
    if isinstance(default, tuple):
        return ",".join(default) or "none"
    return str(default)


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values = {}
    for field in fields(Settings):
        raw = getattr(args, field.name)
        origin = _flag(field.name)
        # An empty env var means "not set", as GRPC_PORT is in an image built without gRPC.
        if raw is None and environ.get(_env(field.name), "") != "":
            raw, origin = environ[_env(field.name)], _env(field.name)
        if raw is None:
            continue
        try:
            values[field.name] = _converter(field.default)(raw)
        except ValueError:
            raise SettingsError(f"{origin} has an invalid value {raw!r}") from None
    return with_model_dir(Settings(**values))


def with_model_dir(settings: Settings) -> Settings:
    """``--model-dir`` read as the bundle or the repository it holds."""
    if not settings.model_dir:
        return settings
    if (Path(settings.model_dir) / "bundle.json").is_file():
        return replace(settings, bundle=settings.model_dir, repository="")
    return replace(settings, repository=settings.model_dir)
