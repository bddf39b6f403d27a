"""``python -m service``: check the bundle (or find the repository), then serve it with uvicorn."""

from __future__ import annotations

import importlib.util
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

from service.manifest import BundleError, load_verified
from service.logs import configure_logging
from service.settings import SettingsError, load_settings

EXIT_BAD_SETTINGS = 2
EXIT_BAD_BUNDLE = 3


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from service.app import create_app
    from service.protocol import http_protocol

    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if settings.grpc_port and importlib.util.find_spec("grpc") is None:
        print("error: --grpc-port needs grpcio; install requirements-grpc.txt", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    manifest = None
    if settings.repository:
        # Its bundles are checked one by one as they load; a bad one is refused, not fatal.
        if not Path(settings.repository).is_dir():
            print(f"error: --repository {settings.repository} is not a directory", file=sys.stderr)
            return EXIT_BAD_SETTINGS
    else:
        try:
            manifest = load_verified(settings.bundle)
        except BundleError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_BUNDLE
    logs = configure_logging(settings.log_level)
    if settings.model_control == "explicit" and not settings.api_keys:
        logging.getLogger("service.cli").warning(
            "MODEL_CONTROL=explicit without API_KEYS: the repository API refuses every call (403)")
    config = uvicorn.Config(
        create_app(settings, manifest),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # the service writes its own JSON access log
        timeout_graceful_shutdown=int(settings.drain_timeout),
        server_header=False,
        # Nothing reads the client's address, so uvicorn's X-Forwarded-For rewrite would be per-request cost for nothing.
        proxy_headers=False,
        http=http_protocol(settings),  # header/body timeouts, head size limit, connection cap
        ws="none",
    )
    # uvicorn drains on SIGTERM or Ctrl-C, then re-raises the signal to the previous
    # handler; making that handler a clean exit turns an orderly shutdown into exit
    # code 0, without a KeyboardInterrupt traceback after the last log line.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    try:
        uvicorn.Server(config).run()
    finally:
        logs.close()  # writes out what is still kept
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
