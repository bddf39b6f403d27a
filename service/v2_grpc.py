"""Open Inference Protocol v2 over gRPC: KServe's ``GRPCInferenceService``, as tritonclient.grpc calls it.

The server runs in the HTTP server's event loop (grpc.aio) and resolves models in
the same ``ModelRegistry``, so both protocols share each model's batcher, its queue bound, the input limit
and the API keys (``authorization: Bearer KEY`` metadata; liveness and readiness
stay open, as their HTTP routes do). Requests are checked by ``service.v2_codec``,
the same code the HTTP routes use.

This module is imported only when ``--grpc-port`` is set, because grpcio is an
optional dependency (requirements-grpc.txt). It cannot share a process with
tritonclient.grpc or kserve: their generated modules define the same protobuf
symbols (package ``inference``), which is also why its tests drive a server process.

A ServiceError becomes the gRPC status Triton uses for the same case (``STATUS``),
with the same message as over HTTP.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

import grpc
from grpc import aio

from service import NAME, __version__, v2_codec
from service.errors import BadRequest, NotReady, ServiceError, Unauthorized
from service.middleware import bearer_key_matches
from service.registry import HELD, MODEL, ModelRegistry, release
from service.proto import grpc_predict_v2_pb2 as pb
from service.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from service.settings import Settings

log = logging.getLogger("service.grpc")
access_log = logging.getLogger("service.access")
SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = ("ServerLive", "ServerReady")
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
Handler = Callable[..., Awaitable[Any]]


def _rpc(method: Handler) -> Handler:
    """API keys, error mapping, metrics and the access log around one RPC."""
    name = method.__name__
    path = f"/{SERVICE}/{name}"

    @functools.wraps(method)
    async def handler(self: InferenceService, request: Any, context: aio.ServicerContext) -> Any:
        started = time.perf_counter()
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        code = grpc.StatusCode.OK
        call: dict[str, Any] = {}  # what the RPC resolved, as an HTTP request's scope records it
        try:
            if self.api_keys and name not in OPEN_METHODS and not bearer_key_matches(
                metadata.get("authorization", ""), self.api_keys
            ):
                raise Unauthorized("missing or invalid API key; send the metadata 'authorization: Bearer KEY'")
            return await method(self, request, context, call)
        except ServiceError as exc:
            code = STATUS.get(exc.status_code, grpc.StatusCode.INTERNAL)
            await context.abort(code, exc.message)
        except Exception:
            log.exception("unhandled error in %s", path)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, "internal error; see the server log")
        finally:
            held = call.get(HELD)
            release(call)
            elapsed = time.perf_counter() - started
            model = call.get(MODEL, "")
            self.registry.metrics.requests.labels(path, code.name, model).inc()
            self.registry.metrics.request_seconds.labels(path, model).observe(elapsed)
            fields = {"request_id": metadata.get("x-request-id") or uuid.uuid4().hex, "method": "gRPC", "path": path,
                      "status": code.name, "duration_ms": round(elapsed * 1000, 3)}
            if model:
                fields["model"] = model
            if held is not None:
                fields["model_version"] = held.version
            access_log.info("request", extra={"fields": fields})

    return handler


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.api_keys = tuple(key.encode() for key in registry.settings.api_keys)

    @_rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: aio.ServicerContext,
                         call: dict) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: aio.ServicerContext,
                          call: dict) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.registry.ready)

    @_rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: aio.ServicerContext,
                         call: dict) -> pb.ModelReadyResponse:
        try:
            self.registry.hold(call, request.name, request.version)
        except NotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: aio.ServicerContext,
                             call: dict) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=NAME, version=__version__, extensions=v2_codec.EXTENSIONS)

    @_rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: aio.ServicerContext,
                            call: dict) -> pb.ModelMetadataResponse:
        held = self.registry.hold(call, request.name, request.version)
        engine = held.engine
        meta = v2_codec.model_metadata(held.name, len(engine.manifest.id2label), engine.takes_pairs,
                                       versions=self.registry.versions(held.name))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**spec) for spec in meta["inputs"]], outputs=[tensor(**spec) for spec in meta["outputs"]],
        )

    @_rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context: aio.ServicerContext,
                         call: dict) -> pb.ModelInferResponse:
        held = self.registry.hold(call, request.model_name, request.model_version)
        engine = held.engine
        texts = v2_codec.texts_from(_inputs(request), max_inputs=engine.settings.max_inputs, pairs=engine.takes_pairs)
        wanted = _outputs(request)
        result = await engine.classify(texts, truncate=True)
        arrays = v2_codec.output_tensors(result.logits, engine.scores(result.logits, raw=False), engine.manifest.labels)
        response = pb.ModelInferResponse(model_name=held.name, model_version=held.version, id=request.id)
        # tritonclient reads every output from raw_output_contents, in output order.
        for name in wanted:
            array = arrays[name]
            response.outputs.add(name=name, datatype=v2_codec.OUTPUT_DATATYPES[name], shape=array.shape)
            response.raw_output_contents.append(v2_codec.raw_bytes(array))
        return response


def _inputs(request: pb.ModelInferRequest) -> list[v2_codec.Tensor]:
    """Inputs from raw_input_contents (tritonclient) or typed bytes_contents (other clients)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    tensors = []
    for index, tensor in enumerate(request.inputs):
        if "shared_memory_region" in tensor.parameters:
            raise BadRequest(f"input {tensor.name!r} uses the shared-memory extension, which this server does not support")
        if raw:
            tensors.append(v2_codec.Tensor(tensor.name, tensor.datatype, list(tensor.shape), raw=raw[index]))
        else:
            tensors.append(v2_codec.Tensor(tensor.name, tensor.datatype, list(tensor.shape),
                                           data=list(tensor.contents.bytes_contents)))
    return tensors


def _outputs(request: pb.ModelInferRequest) -> list[str]:
    if not request.outputs:
        return list(v2_codec.OUTPUT_DATATYPES)
    names: list[str] = []
    for output in request.outputs:
        v2_codec.check_output_name(output.name, names)
        if "classification" in output.parameters:
            raise BadRequest("the classification extension is not supported; request 'probabilities' and 'label'")
        names.append(output.name)
    return names


async def start(registry: ModelRegistry, settings: Settings) -> aio.Server:
    """Listen on ``settings.grpc_port``; call from inside the running event loop."""
    # The HTTP body limit bounds request messages too; gRPC refuses larger ones with RESOURCE_EXHAUSTED.
    server = aio.server(options=[("grpc.max_receive_message_length", settings.max_body_bytes)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(registry), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    server.add_insecure_port(f"{host}:{settings.grpc_port}")
    await server.start()
    log.info("gRPC listening", extra={"fields": {"port": settings.grpc_port}})
    return server
