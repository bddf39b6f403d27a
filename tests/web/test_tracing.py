"""Traces reach a real OTLP receiver, over both of the exporter's protocols, with the expected tree.

The receivers run in the test process: an HTTP server taking ``POST /v1/traces`` and a gRPC
``TraceService``, both decoding the protobuf ``ExportTraceServiceRequest`` the service's exporter
sends. The service runs as a real process with the standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.conftest import ROOT, needs_export
from tests.helpers import SERVE_PYTHON, ServerProcess, free_port, require_serve_env

pytestmark = needs_export
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SECRET_TEXT = "my account number is 12345"


class Receiver:
    """What an OTLP collector received: every span, flattened, with its resource's service name."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "name": span.name,
                                "trace": span.trace_id.hex(),
                                "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "service": resource.get("service.name"),
                            }
                        )

    def wait_for(self, names: set[str], timeout: float = 120.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if names <= {span["name"] for span in self.spans}:
                    return list(self.spans)
            time.sleep(0.05)
        raise AssertionError(f"spans {names} not all received; got {[s['name'] for s in self.spans]}")


def _value(value) -> object:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def http_receiver(receiver: Receiver, host: str = "127.0.0.1"):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            body = self.rfile.read(int(self.headers["content-length"]))
            assert self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf"
            receiver.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{host}:{server.server_port}", server.shutdown


def grpc_receiver(receiver: Receiver):
    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 - the name the protocol gives it
            receiver.take(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return f"http://127.0.0.1:{port}", lambda: server.stop(0)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_request_is_one_trace_over_http_and_grpc(tiny_bundle, protocol):
    require_serve_env()
    receiver = Receiver()
    endpoint, stop_receiver = (http_receiver if protocol == "http/protobuf" else grpc_receiver)(receiver)
    grpc_port = free_port()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "classifier-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    server = ServerProcess(tiny_bundle("bert"), "--grpc-port", str(grpc_port), env=env)
    try:
        server.wait_ready()
        headers = {"traceparent": TRACEPARENT, "x-request-id": "traced-http"}
        response = httpx.post(server.url + "/predict", json={"inputs": SECRET_TEXT}, headers=headers)
        assert response.status_code == 200
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([SECRET_TEXT], dtype=object))
        grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").infer(
            "classifier", [text], headers={"traceparent": TRACEPARENT, "x-request-id": "traced-grpc"}
        )
        spans = receiver.wait_for({"POST /predict", "inference.GRPCInferenceService/ModelInfer", "batch"})
    finally:
        server.stop()
        stop_receiver()

    by_name = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert {span["service"] for span in spans} == {"classifier-under-test"}
    batches = by_name["batch"]
    for name, request_id in (
        ("POST /predict", "traced-http"),
        ("inference.GRPCInferenceService/ModelInfer", "traced-grpc"),
    ):
        (request,) = [span for span in by_name[name] if span["attributes"].get("request.id") == request_id]
        assert (request["trace"], request["parent"]) == (TRACE_ID, PARENT_ID)  # the caller's trace continues
        assert request["attributes"]["model"] == "classifier"
        children = sorted(span["name"] for span in spans if span["parent"] == request["id"])
        assert children == ["admission", "inference", "queue", "tokenize"]
        assert all(span["trace"] == TRACE_ID for span in spans if span["parent"] == request["id"])
        (batch,) = [span for span in batches if (TRACE_ID, request["id"]) in span["links"]]
        assert batch["trace"] != TRACE_ID and batch["parent"] == ""  # a trace of its own, linked
        assert batch["attributes"]["batch.size"] >= 1
    http_request = next(span for span in by_name["POST /predict"] if span["parent"] == PARENT_ID)
    assert http_request["attributes"]["http.response.status_code"] == 200
    assert http_request["attributes"]["http.route"] == "/predict"
    assert not [span for span in spans if any(SECRET_TEXT in str(v) for v in span["attributes"].values())]


def test_tracing_that_cannot_be_set_up_is_a_clear_start_up_error(tiny_bundle):
    require_serve_env()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "udp"}
    done = subprocess.run(
        [str(SERVE_PYTHON), "-m", "service", "--bundle", str(tiny_bundle("bert")), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, got 'udp'"
    )
