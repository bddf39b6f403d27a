"""The Open Inference Protocol over gRPC: KServe's ``GRPCInferenceService``, as tritonclient.grpc calls it.

The server runs in the HTTP server's event loop (grpc.aio) and resolves models in
the same ``ModelRegistry``, so both transports share each model's batcher, its
queue bound, the input limit and the API keys (``authorization: Bearer KEY``
metadata; liveness and readiness stay open, as their HTTP routes do). A
``ModelInferRequest`` is read into the neutral ``infer.InferRequest`` and answered
by ``dataplane.model_infer``, the code the HTTP route uses.

Every failure maps to a gRPC status in one table (``STATUS``), with the same
message as over HTTP; a message that is not a valid protobuf is refused with
``INVALID_ARGUMENT`` before any handler runs. Calls are recorded as HTTP's are
(``service.core.calls``), their status as the HTTP number ``google.rpc.Code``
gives each gRPC code.

This module is imported only when ``--grpc-port`` is set, because grpcio is an
optional dependency (requirements-grpc.txt). Its messages live in a descriptor
pool of their own (``scripts/gen-grpc.sh``), so it shares a process with
tritonclient.grpc and kserve, whose generated modules use the same names.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from service import NAME, __version__
from service.core import failures
from service.core.calls import Call, bearer_key_matches, finish, request_id
from service.core.registry import ModelRegistry
from service.core.urgency import deadline_after, priority_header
from service.logs import REQUEST_ID
from service.protocols.oip import dataplane, infer
from service.protocols.oip.proto import grpc_predict_v2_pb2 as pb
from service.settings import Settings

log = logging.getLogger("service.protocols.oip.grpc_service")
SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = ("ServerLive", "ServerReady")
GRPC_DEADLINE_MARGIN = 0.005
Code = grpc.StatusCode
STATUS: dict[type[failures.Failure], grpc.StatusCode] = {
    failures.Failure: Code.INTERNAL,
    failures.QueueFull: Code.RESOURCE_EXHAUSTED,
    failures.DeadlineExceeded: Code.DEADLINE_EXCEEDED,
    failures.ShuttingDown: Code.UNAVAILABLE,
    failures.VersionUnloaded: Code.UNAVAILABLE,
    failures.NotReady: Code.UNAVAILABLE,
    failures.ModelNotFound: Code.NOT_FOUND,
    failures.InvalidInput: Code.INVALID_ARGUMENT,
    failures.InputTooLong: Code.INVALID_ARGUMENT,
    failures.EmptyInput: Code.INVALID_ARGUMENT,
    failures.BadRequest: Code.INVALID_ARGUMENT,
    failures.MalformedBody: Code.INVALID_ARGUMENT,
    failures.PayloadTooLarge: Code.RESOURCE_EXHAUSTED,
    failures.UnsupportedMediaType: Code.INVALID_ARGUMENT,
    failures.Unauthenticated: Code.UNAUTHENTICATED,
    failures.Forbidden: Code.PERMISSION_DENIED,
    failures.LoadRefused: Code.INVALID_ARGUMENT,
}
# google.rpc.Code's HTTP mapping: the status a gRPC call is recorded with.
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}
Method = Callable[[Any, Call], Awaitable[Any]]


def status_of(failure: failures.Failure) -> grpc.StatusCode:
    # The most specific class the failure is an instance of.
    return next(STATUS[cls] for cls in type(failure).__mro__ if cls in STATUS)


class _Malformed:
    """What the deserializer hands on for bytes that are not the method's message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(message: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a hostile message triggers
            return _Malformed(exc)

    return deserialize


def from_grpc(request: pb.ModelInferRequest) -> infer.InferRequest:
    """The neutral request: inputs from raw_input_contents (tritonclient) or typed bytes_contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise failures.BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    tensors = []
    for index, tensor in enumerate(request.inputs):
        parameters = _parameters(tensor.parameters)
        if raw:
            tensors.append(infer.Tensor(tensor.name, tensor.datatype, list(tensor.shape), parameters, raw=raw[index]))
        else:
            tensors.append(
                infer.Tensor(
                    tensor.name,
                    tensor.datatype,
                    list(tensor.shape),
                    parameters,
                    data=list(tensor.contents.bytes_contents),
                )
            )
    outputs = [infer.OutputRequest(output.name, _parameters(output.parameters)) for output in request.outputs]
    return infer.InferRequest(tensors, outputs, _parameters(request.parameters), request.id or None)


def _parameters(parameters: Any) -> dict[str, Any]:
    """InferParameter messages as the plain values JSON would carry."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def to_grpc(response: infer.InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    for key, value in response.parameters.items():
        message.parameters[key].string_param = value
    # tritonclient reads every output from raw_output_contents, in output order.
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        message.raw_output_contents.append(infer.raw_bytes(tensor.array))
    return message


class InferenceService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.api_keys = tuple(key.encode() for key in registry.settings.api_keys)
        self.high_priority_keys = tuple(key.encode() for key in registry.settings.high_priority_keys)

    async def ServerLive(self, request: pb.ServerLiveRequest, call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, call: Call) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.registry.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, call: Call) -> pb.ModelReadyResponse:
        try:
            self.registry.hold(call, request.name, request.version)
        except failures.NotReady:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, call: Call) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=NAME, version=__version__, extensions=infer.EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, call: Call) -> pb.ModelMetadataResponse:
        held = self.registry.hold(call, request.name, request.version)
        engine = held.engine
        meta = infer.model_metadata(
            held.name, len(engine.manifest.id2label), engine.takes_pairs, versions=self.registry.versions(held.name)
        )
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**spec) for spec in meta["inputs"]],
            outputs=[tensor(**spec) for spec in meta["outputs"]],
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        async def receive() -> dataplane.Arrived:
            # gRPC has parsed the message: a full queue refuses it before its texts are copied out and decoded.
            return dataplane.Arrived(request.inputs, functools.partial(from_grpc, request))

        inferred = await dataplane.model_infer(self.registry, call, request.model_name, request.model_version, receive)
        return to_grpc(inferred.response)

    def handler(self, name: str, method: Method) -> Callable[[Any, aio.ServicerContext], Awaitable[Any]]:
        """API keys, the failure table, the call's record and its log context around one RPC."""
        path = f"/{SERVICE}/{name}"
        tracing = self.registry.tracing

        @functools.wraps(method)
        async def rpc(request: Any, context: aio.ServicerContext) -> Any:
            metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
            if not tracing.on:
                return await answer(request, context, metadata)
            attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name}
            with tracing.server_span(path.lstrip("/"), metadata, attributes) as span:
                return await answer(request, context, metadata, span)

        async def answer(request: Any, context: aio.ServicerContext, metadata: dict[str, str], span: Any = None) -> Any:
            call = Call("grpc", "POST", path, request_id(metadata.get("x-request-id")))
            token = REQUEST_ID.set(call.request_id)
            code = Code.OK
            try:
                # The key first: a caller without one learns nothing else about its call, not even that its
                # bytes or its metadata are bad.
                authorization = metadata.get("authorization", "")
                if self.api_keys and name not in OPEN_METHODS and not bearer_key_matches(authorization, self.api_keys):
                    raise failures.Unauthenticated(
                        "missing or invalid API key; send the metadata 'authorization: Bearer KEY'"
                    )
                if isinstance(request, _Malformed):
                    raise failures.MalformedBody(f"the request is not a valid {name}Request message")
                if self.high_priority_keys:
                    call.may_ask_high = bearer_key_matches(authorization, self.high_priority_keys)
                if name not in OPEN_METHODS:  # probes run no model: a priority means nothing to them
                    if (remaining := context.time_remaining()) is not None:  # the client's deadline, a little
                        # early so that the service answers it (and counts it) before gRPC cancels the call itself
                        call.deadline = deadline_after(remaining - GRPC_DEADLINE_MARGIN)
                    if (priority := metadata.get("x-priority")) is not None:
                        call.priority = call.ask(priority_header(priority))
                return await method(request, call)
            except failures.Failure as exc:
                code = status_of(exc)
                await context.abort(code, exc.message)
            except asyncio.CancelledError:  # the client cancelled, or the server stops
                code = Code.CANCELLED
                raise
            except Exception:
                log.exception("unhandled error in %s", path)
                code = Code.INTERNAL
                await context.abort(code, "internal error; see the server log")
            finally:
                finish(call, HTTP_STATUS[code], path, self.registry.metrics)
                REQUEST_ID.reset(token)
                if span is not None:
                    span.set_attributes({"request.id": call.request_id, "rpc.grpc.status_code": code.value[0]})
                    if call.model:
                        span.set_attribute("model", call.model)

        return rpc

    def generic_handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Any, Any]] = {
            "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self.handler(name, getattr(self, name)),
                request_deserializer=_tolerant(request),
                response_serializer=response.SerializeToString,
            )
            for name, (request, response) in methods.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def start(registry: ModelRegistry, settings: Settings) -> aio.Server:
    """Listen on ``settings.grpc_port``; call from inside the running event loop."""
    # The HTTP limits hold here too. A message over MAX_BODY_BYTES is refused with RESOURCE_EXHAUSTED;
    # connections beyond MAX_CONNECTIONS are closed; each carries at most GRPC_MAX_STREAMS calls; and calls
    # beyond MAX_CONNECTIONS in progress are refused with RESOURCE_EXHAUSTED before their handler runs, so
    # the messages held in memory stay within MAX_CONNECTIONS x MAX_BODY_BYTES.
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_allowed_incoming_connections", settings.max_connections),
            ("grpc.max_concurrent_streams", settings.grpc_max_streams),
        ],
        maximum_concurrent_rpcs=settings.max_connections,
    )
    server.add_generic_rpc_handlers((InferenceService(registry).generic_handler(),))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    server.add_insecure_port(f"{host}:{settings.grpc_port}")
    await server.start()
    log.info("gRPC listening", extra={"fields": {"port": settings.grpc_port}})
    return server
