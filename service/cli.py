"""``python -m service``: check the bundle (or find the repository), then serve it with uvicorn.

Exit codes: 0 after an orderly shutdown, 2 for a bad setting, 3 for a bad bundle,
4 when a port to listen on is taken or cannot be bound, 5 when the bundle fails its
re-verification on this CPU (``ON_FAILED_VERIFICATION=refuse``, the default).
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from service.core.backends.choice import EngineUnavailable, choose, installed_openvino
from service.core.cpu import cpu_flags
from service.core.manifest import BundleError, present_engines
from service.core.origin import Trust, check_keys, load_trusted
from service.core.tracing import TracingError
from service.core.tracing import from_environment as tracing_from_environment
from service.logs import configure_logging
from service.settings import SettingsError, load_settings

EXIT_BAD_SETTINGS = 2
EXIT_BAD_BUNDLE = 3
EXIT_PORT_UNAVAILABLE = 4
EXIT_FAILED_VERIFICATION = 5


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from service.app import create_app
    from service.web.connection import Connections, http_protocol, sole_caller

    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        return _fail(str(exc), EXIT_BAD_SETTINGS)
    if settings.grpc_port and importlib.util.find_spec("grpc") is None:
        return _fail("--grpc-port needs grpcio; install requirements-grpc.txt", EXIT_BAD_SETTINGS)
    try:
        tracing = tracing_from_environment()  # off unless OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set
    except TracingError as exc:
        return _fail(str(exc), EXIT_BAD_SETTINGS)
    problem = check_keys(settings.trusted_keys)
    if problem:
        return _fail(problem, EXIT_BAD_SETTINGS)
    manifest = None
    if settings.repository:
        # Its bundles are checked one by one as they load; a bad one is refused, not fatal.
        if not Path(settings.repository).is_dir():
            return _fail(f"--repository {settings.repository} is not a directory", EXIT_BAD_SETTINGS)
    else:
        try:
            manifest = load_trusted(Path(settings.bundle), Trust.of(settings))
        except BundleError as exc:
            return _fail(str(exc), EXIT_BAD_BUNDLE)
        try:  # an engine named outright that cannot run this bundle is told at once
            choose(settings.engine, present_engines(Path(settings.bundle), manifest), cpu_flags(), installed_openvino())
        except EngineUnavailable as exc:
            return _fail(str(exc), EXIT_BAD_SETTINGS)
    # Before any model loads: a taken port is told at once, not after a minute of loading.
    for flag, port in (("--port", settings.port), ("--grpc-port", settings.grpc_port)):
        problem = _cannot_bind(settings.host, port) if port else None
        if problem:
            return _fail(f"{flag} {port} on {settings.host}: {problem}", EXIT_PORT_UNAVAILABLE)
    logs = configure_logging(settings.log_level)
    if settings.model_control == "explicit" and not settings.api_keys:
        logging.getLogger("service.cli").warning(
            "MODEL_CONTROL=explicit without API_KEYS: the repository API refuses every call (403)"
        )
    connections = Connections()
    fatal: list[str] = []

    def stop_serving(reason: str) -> None:  # the one bundle failed its re-verification: nothing to serve
        fatal.append(reason)
        server.should_exit = True

    app = create_app(
        settings, manifest, sole_caller=sole_caller(settings, connections), on_fatal=stop_serving, tracing=tracing
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # the service writes its own JSON access log
        timeout_graceful_shutdown=int(settings.drain_timeout),
        server_header=False,
        # Nothing reads the client's address: uvicorn's X-Forwarded-For rewrite would cost every request for nothing.
        proxy_headers=False,
        # Header/body timeouts, head size limit, connection cap. uvicorn calls what it is given once per
        # connection, so a factory serves as well as the class its annotation asks for.
        http=http_protocol(settings, connections),  # type: ignore[arg-type]
        ws="none",
    )
    # uvicorn drains on SIGTERM or Ctrl-C, then re-raises the signal to the previous
    # handler; making that handler a clean exit turns an orderly shutdown into exit
    # code 0, without a KeyboardInterrupt traceback after the last log line.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        logs.close()  # writes out what is still kept
    if fatal:
        return _fail(f"{settings.repository or settings.bundle}: {fatal[0]}", EXIT_FAILED_VERIFICATION)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _cannot_bind(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (taken, or no such address), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: a port left in TIME_WAIT by an earlier run is free to reuse.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
