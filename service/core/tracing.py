"""OpenTelemetry traces of every request, off unless an OTLP endpoint is configured.

Configured by the standard ``OTEL_*`` environment variables, read by the OpenTelemetry SDK:
tracing is on when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``
is set (and ``OTEL_SDK_DISABLED`` is not ``true``); ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``
picks ``grpc`` or ``http/protobuf`` (the default, as the specification's); ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER(_ARG)`` and ``OTEL_BSP_*`` work as
everywhere. The SDK and its exporters are optional (``requirements-otel.txt``).

What one request makes:

- a server span per request (HTTP, or gRPC), a child of the caller's W3C ``traceparent`` when it
  sends one, carrying the request id and the model, never an input's text;
- under it ``admission``, ``tokenize``, ``queue`` (from queueing to the batch's start) and
  ``inference`` (the batch's run), for each model call;
- a ``batch`` span per batch, in a trace of its own, with a link to every request span it served:
  one batch serves many requests, so it cannot be the child of one.

Off, every hook is a test of ``None``: nothing is imported and nothing is recorded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

HTTP, GRPC = "http/protobuf", "grpc"


class TracingError(Exception):
    """Tracing is asked for and cannot be set up (the SDK missing, a protocol unknown)."""


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return bool(endpoint) and environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"


class Tracing:
    """The tracer, or nothing. One per app; ``shutdown`` flushes the spans still buffered."""

    def __init__(self, tracer: Any = None, provider: Any = None) -> None:
        self.tracer = tracer
        self._provider = provider

    @property
    def on(self) -> bool:
        return self.tracer is not None

    @contextlib.contextmanager
    def server_span(self, name: str, carrier: Mapping[str, str], attributes: dict[str, Any]) -> Iterator[Any]:
        """The span of one request, the current span while it runs: a child of the caller's ``traceparent``."""
        from opentelemetry import trace
        from opentelemetry.propagate import extract

        with self.tracer.start_as_current_span(
            name, context=extract(carrier), kind=trace.SpanKind.SERVER, attributes=attributes
        ) as span:
            yield span

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any] | None = None) -> Iterator[Any]:
        """A child of the current span (a no-op when tracing is off)."""
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def current(self) -> Any:
        """The current span's context, for a batch to link to (None when off)."""
        if self.tracer is None:
            return None
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        return context if context.is_valid else None

    def record(self, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None) -> None:
        """A child of the current span for a stretch of time already past (the wait in the queue)."""
        if self.tracer is None:
            return
        span = self.tracer.start_span(name, start_time=start_ns, attributes=attributes)
        span.end(end_time=end_ns)

    def batch(self, links: Sequence[Any], start_ns: int, end_ns: int, attributes: dict[str, Any]) -> None:
        """One batch's span, a root linked to the request spans whose inputs it ran."""
        if self.tracer is None:
            return
        from opentelemetry import context, trace

        unique = list({(link.trace_id, link.span_id): link for link in links if link is not None}.values())
        span = self.tracer.start_span(
            "batch",
            context=context.Context(),  # a trace of its own, not the child of whichever request came first
            links=[trace.Link(link) for link in unique],
            start_time=start_ns,
            attributes=attributes,
        )
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


OFF = Tracing()


def from_environment(environ: Mapping[str, str] = os.environ) -> Tracing:
    """The tracing the ``OTEL_*`` variables ask for: OFF unless an endpoint is set."""
    if not wanted(environ):
        return OFF
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or HTTP
    ).strip()
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if protocol == GRPC:
            from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as exporter
        elif protocol == HTTP:
            from opentelemetry.exporter.otlp.proto.http import trace_exporter as exporter  # type: ignore[no-redef]
        else:
            raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be {GRPC} or {HTTP}, got {protocol!r}")
    except ImportError as exc:
        raise TracingError(
            f"an OTLP endpoint is set but the OpenTelemetry SDK is missing ({exc.name}); "
            "install requirements-otel.txt, or unset OTEL_EXPORTER_OTLP_ENDPOINT"
        ) from None
    from service import NAME

    # The SDK reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, the sampler and the exporter's own variables;
    # without a name from them, the service's.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter.OTLPSpanExporter()))
    return Tracing(provider.get_tracer("service"), provider)
