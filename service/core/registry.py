"""The models this process serves, loaded, swapped and unloaded while traffic flows.

Models come from one bundle (``--bundle``: a one-model repository named
MODEL_NAME, version 1) or from a repository directory (``service.core.repository``),
read at start and then every POLL_INTERVAL seconds (MODEL_CONTROL=poll) or when
the repository API asks (MODEL_CONTROL=explicit, ``service.protocols.oip.repository``).

A new version comes in beside the one serving: its bundle is hash-checked
(``load_verified``), its session loaded and warmed by its own ``Engine`` (own
batcher, own queue bound). Only then does the model's entry point at it, by one
assignment, so a request resolves the old engine or the new one and never
neither. A request holds the engine it resolved until it has answered
(``hold``, released by the middleware); a replaced engine stops once its last
request is out (or after DRAIN_TIMEOUT), and its session is freed with it. A
bundle that fails any step (missing or extra files, a hash mismatch, a
half-copied directory, a session that does not load) is refused and logged,
whatever served keeps serving, and it is retried once its files change.

A version can be a shadow of the serving one (SHADOW, or the repository API's load
with ``shadow_version``): it loads the same way, on a session of its own
(SHADOW_THREADS) whose metrics are not scraped as the model's, and is told a share
of the inputs the newest serving version answers (``service.core.shadow``). It
never answers a client: asking for it by version is 404. Clearing the shadow
promotes it through the same swap as any new version: it loads again as a serving
version beside the one serving, then takes over.

Readiness: ready once every model found at start has loaded or been refused,
while at least one model serves. Models that appear later do not make the
server unready while they load (replicas polling the same volume would
otherwise drop out of their Service together); each model's own readiness is
``/v2/models/NAME/ready``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

from service.core import repository
from service.core.calls import Call
from service.core.classifier import release_free_memory
from service.core.engine import Engine
from service.core.failures import Failure, LoadRefused, ModelNotFound, NotReady, ShuttingDown, VersionUnloaded
from service.core.loaded import Loaded
from service.core.manifest import BundleError, Manifest
from service.core.metrics import Metrics, ModelMetrics
from service.core.origin import Trust, load_trusted
from service.core.repository import Found
from service.core.shadow import Shadow
from service.core.tracing import OFF, Tracing
from service.settings import PER_MODEL, Settings

log = logging.getLogger("service.core.registry")
# Triton's model states, as its repository index reports them.
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
LOADING_REASON = "model is loading"


@dataclasses.dataclass
class Model:
    name: str
    # Replaced whole, never changed in place: a request sees the old dict or the new one.
    loaded: dict[str, Loaded] = dataclasses.field(default_factory=dict)
    reason: str = LOADING_REASON
    pending: bool = True  # not synced yet
    loading: str | None = None  # the version being brought in
    refused: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # version -> (fingerprint, why)
    unloaded: bool = False  # by the repository API, until loaded again
    shadow_version: str = ""  # the version loaded as a shadow of the serving one; "" for none
    shadow_fraction: float = 0.1
    shadow: Loaded | None = None

    @property
    def state(self) -> str:
        if self.loaded:
            return READY
        return LOADING if self.pending or self.loading else UNAVAILABLE


def _public_state(model: Model) -> str:
    if model.state == LOADING:
        return "loading"
    return "unloaded" if model.unloaded else "failed to load"


def _quoted(items: list[str]) -> str:
    return ", ".join(repr(item) for item in items)


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        manifest: Manifest | None = None,
        *,
        sole_caller: Callable[[], bool] | None = None,
        on_fatal: Callable[[str], None] | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        """``sole_caller``, when given, tells whether the caller being served is the only one the
        process has (``service.core.batcher``); the transport that knows its connections offers it.
        ``on_fatal`` is told when a single bundle (``--bundle``) fails its re-verification: with nothing
        else to serve, the process should stop rather than answer 503 for ever."""
        self.settings = settings
        self.metrics = metrics
        self._sole_caller = sole_caller
        self._on_fatal = on_fatal
        self.tracing = tracing
        self.models: dict[str, Model] = {}
        self.root = Path(settings.repository) if settings.repository else None
        self._manifest = manifest  # --bundle's manifest, as the CLI already checked it
        # The scan's lock, and one per model: a model that takes long to load (a large reference set) keeps
        # the repository API waiting for that model only.
        self._lock = asyncio.Lock()
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._started = False
        self._crash = ""  # why loading the models failed as a whole (a defect, told in the log)
        self._tasks: set[asyncio.Task] = set()
        self._poller: asyncio.Task | None = None
        # Shadow versions record their own engine metrics here, never scraped: /metrics shows what the model
        # served, and the classifier_shadow_* series show the shadow.
        self._unscraped = Metrics()
        self._shadows = dict(entry.rpartition(":")[::2] for entry in settings.shadow)

    # Where versions come from --------------------------------------------------

    def _scan(self) -> dict[str, list[Found]]:
        if self.root is None:
            path, name = Path(self.settings.bundle), self.settings.model_name
            return {name: [Found(name, repository.FLAT_VERSION, path, repository.fingerprint(path))]}
        return repository.scan(self.root)

    def _verify(self, path: Path) -> Manifest:
        if self.root is None and self._manifest is not None:
            return self._manifest
        return load_trusted(path, Trust.of(self.settings), repository=self.root)  # signature and digest first

    def _lock_of(self, name: str) -> asyncio.Lock:
        return self._model_locks.setdefault(name, asyncio.Lock())

    def _model(self, name: str) -> Model:
        if name not in self.models:
            self.models[name] = Model(
                name, shadow_version=self._shadows.get(name, ""), shadow_fraction=self.settings.shadow_fraction
            )
        return self.models[name]

    # Life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model found; then, with MODEL_CONTROL=poll, keep scanning."""
        try:
            await self.sync()
        except OSError as exc:
            log.error("cannot read the model repository", extra={"fields": {"error": str(exc)}})
        self._started = True
        if self.settings.model_control == "poll":
            self._poller = asyncio.create_task(self._poll(), name="repository-poll")

    def crashed(self, reason: str) -> None:
        """Loading the models failed as a whole: the server is no longer loading, and says so."""
        self._crash = reason
        self._started = True

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        async with self._lock:
            for model in list(self.models.values()):
                async with self._lock_of(model.name):
                    for version in self._take_all(model):
                        self._retire(version, ShuttingDown())
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                await self.sync()
            except Exception:  # a scan that fails (a vanished directory) is retried at the next one
                log.exception("repository scan failed")

    async def sync(self) -> None:
        """Bring every model to what the repository holds now: new, changed and removed ones."""
        async with self._lock:
            found = await asyncio.to_thread(self._scan)
            for name in found:
                self._model(name)  # listed as LOADING at once
            for name in sorted(set(self.models)):
                async with self._lock_of(name):
                    if name not in self.models:  # unloaded and removed while this scan waited
                        continue
                    if name in found:
                        await self._sync_model(self.models[name], found[name])
                    else:
                        self._remove(name)

    async def load(
        self, name: str, *, shadow_version: str | None = None, shadow_fraction: float | None = None
    ) -> Model:
        """Load or reload one model from the repository (the repository API's load); ``shadow_version`` names
        the version to load as its shadow ("" for none, None to keep what it was)."""
        assert self.root is not None, "explicit model control needs a repository"
        if not repository.is_model_name(name):
            raise ModelNotFound(f"model {name!r} is not in the repository: that is not a model name")
        async with self._lock_of(name):
            leading_out: list[str] = []
            found = await asyncio.to_thread(repository.versions, self.root, name, leading_out)
            if not found and leading_out:
                raise LoadRefused(
                    f"model {name!r} is not loaded: {', '.join(leading_out)} leads out of the repository through "
                    "a link; links must stay inside it"
                )
            if not found:
                # The directory is the server's business: a caller learns the name, never a path.
                raise ModelNotFound(f"model {name!r} is not in the repository: its directory holds no bundle")
            if shadow_version and shadow_version not in {item.version for item in found}:
                raise ModelNotFound(
                    f"model {name!r} has no version {shadow_version!r} to shadow it with; the repository holds "
                    f"{_quoted([item.version for item in found])}"
                )
            if shadow_version and all(item.version == shadow_version for item in found):
                # Checked before anything changes: the shadow would leave no version to serve.
                raise LoadRefused(
                    f"model {name!r} version {shadow_version!r} is its only version: a shadow needs another "
                    "version to serve beside it; nothing was changed"
                )
            model = self._model(name)
            if shadow_version is not None:
                model.shadow_version = shadow_version
            if shadow_fraction is not None:
                model.shadow_fraction = shadow_fraction
            model.unloaded = False
            await self._sync_model(model, found)
            if not model.loaded:
                raise LoadRefused(f"failed to load {name!r}: {model.reason}")
            wanted = found if self.settings.version_policy == "all" else found[:1]
            refused = [item.version for item in wanted if item.version in model.refused]
            if refused:
                serving = sorted(model.loaded, key=int)
                raise LoadRefused(
                    f"failed to load {name!r} version {refused[0]!r}: {model.refused[refused[0]][1]}; "
                    f"version {_quoted(serving)} keeps serving"
                )
            return model

    async def unload(self, name: str) -> None:
        """Stop serving one model; it stays in the index as UNAVAILABLE until loaded again."""
        async with self._lock_of(name):
            model = self.models.get(name)
            if model is None:
                raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {_quoted(sorted(self.models))}")
            retired = self._take_all(model)
            model.reason, model.pending, model.refused = f"model {name!r} is unloaded", False, {}
            model.unloaded = True
            for version in retired:
                self._retire(version)

    # Versions in and out ------------------------------------------------------------

    async def _sync_model(self, model: Model, found: list[Found]) -> None:
        keep: dict[str, Loaded] = {}
        for item in found:  # newest first
            if item.version == model.shadow_version:
                continue
            loaded = await self._bring_in(model, item, model.loaded.get(item.version))
            if loaded is not None:
                keep[item.version] = loaded
                if self.settings.version_policy == "latest":
                    break
        shadow = None
        for item in found:
            if item.version == model.shadow_version:
                current = model.shadow if model.shadow is not None and model.shadow.version == item.version else None
                shadow = await self._bring_in(model, item, current, shadow=True)
        present = {item.version for item in found}
        model.refused = {version: why for version, why in model.refused.items() if version in present}
        retired = [loaded for version, loaded in model.loaded.items() if keep.get(version) is not loaded]
        if model.shadow is not None and model.shadow is not shadow:
            retired.append(model.shadow)
        previous = list(model.loaded.values())
        model.loaded, model.shadow, model.pending = keep, shadow, False
        self._attach_shadow(model, previous)
        model.reason = (
            ""
            if keep
            else next(
                (model.refused[item.version][1] for item in found if item.version in model.refused), "no version loaded"
            )
        )
        for loaded in retired:
            self._retire(loaded)

    async def _bring_in(
        self, model: Model, item: Found, current: Loaded | None, *, shadow: bool = False
    ) -> Loaded | None:
        """The loaded engine for ``item``: ``current`` if unchanged, a new one, or ``current`` if refused."""
        if current is not None and current.fingerprint == item.fingerprint:
            return current
        refused = model.refused.get(item.version)
        if refused is not None and refused[0] == item.fingerprint:
            return current  # refused before and unchanged since: not retried
        model.loading = item.version
        try:
            try:
                manifest = await asyncio.to_thread(self._verify, item.path)
            except BundleError as exc:
                return self._refuse(model, item, str(exc), current)
            except Exception as exc:  # a bundle must never stop the others loading, whatever it holds
                log.exception("bundle could not be read", extra={"fields": {"model": model.name}})
                return self._refuse(model, item, f"bundle could not be read: {type(exc).__name__}", current)
            if current is not None and current.engine.manifest.files == manifest.files:
                current.fingerprint = item.fingerprint  # the same files, touched or copied again
                return current
            try:
                settings = self._settings_of(model, item)
            except ValueError as exc:
                return self._refuse(model, item, str(exc), current)
            view = (self._unscraped if shadow else self.metrics).for_model(model.name)
            if shadow:
                settings = dataclasses.replace(settings, intra_op_threads=self.settings.shadow_threads, cache_size=0)
            engine = Engine(settings, view, manifest, sole_caller=self._sole_caller, tracing=self.tracing)
            await engine.start()
            problem = None if engine.ready else engine.not_ready_reason
            if problem is not None and engine.failed_verification and self.root is None and self._on_fatal:
                self._on_fatal(problem)
            if problem is None and await asyncio.to_thread(repository.fingerprint, item.path) != item.fingerprint:
                problem = "its files changed while it loaded; it is read again at the next scan"
            if problem is not None:
                await engine.stop()
                self._forget(view)
                return self._refuse(model, item, problem, current)
        finally:
            model.loading = None
        model.refused.pop(item.version, None)
        log.info(
            "model version loaded",
            extra={
                "fields": {
                    "model": model.name,
                    "version": item.version,
                    "path": str(item.path),
                    "model_id": manifest.model_id,
                    "variant": manifest.variant,
                    "replaces": current is not None,
                    "shadow": shadow,
                }
            },
        )
        return Loaded(model.name, item.version, engine, view, item.fingerprint, shadow=shadow)

    def _attach_shadow(self, model: Model, previous: list[Loaded]) -> None:
        """Point the newest serving version at the model's shadow, and every other version (``previous`` holds
        those that served before) at none."""
        newest = model.loaded[max(model.loaded, key=int)] if model.loaded else None
        for loaded in {id(item): item for item in [*previous, *model.loaded.values()]}.values():
            watched = loaded.engine.shadow
            keep = (
                loaded is newest
                and watched is not None
                and watched.candidate is model.shadow
                and watched.sampler.fraction == model.shadow_fraction
            )
            if watched is not None and not keep:
                loaded.engine.shadow = None
                watched.metrics.close()
        if newest is None or model.shadow is None or newest.engine.shadow is not None:
            return
        shadow = Shadow(
            newest.engine,
            model.shadow,
            fraction=model.shadow_fraction,
            cpu_budget=self.settings.shadow_cpu_budget,
            metrics=self.metrics.for_shadow(model.name, model.shadow.version),
        )
        newest.engine.shadow = shadow
        log.info(
            "shadow attached",
            extra={
                "fields": {
                    "model": model.name,
                    "version": model.shadow.version,
                    "serving_version": newest.version,
                    "fraction": model.shadow_fraction,
                }
            },
        )

    def _take_all(self, model: Model) -> list[Loaded]:
        """Every version of ``model``, serving and shadow, taken out of service (to be retired)."""
        serving = list(model.loaded.values())
        taken = [*serving, *([model.shadow] if model.shadow is not None else [])]
        model.loaded, model.shadow = {}, None
        self._attach_shadow(model, serving)
        return taken

    def _forget(self, view: ModelMetrics) -> None:
        self.metrics.forget(view)
        self._unscraped.forget(view)

    def _settings_of(self, model: Model, item: Found) -> Settings:
        """The process's settings for one version: its bundle, its model's name, and what its model's
        ``serving.json`` sets (SettingsError, a ValueError, when a value is out of range)."""
        overrides = {}
        if self.root is not None:
            overrides = repository.serving_overrides(self.root / model.name, PER_MODEL)
        for name, value in overrides.items():
            expected = type(getattr(self.settings, name))
            if type(value) is not expected:  # exact: JSON's true is not a number of windows
                kind = {bool: "true or false", int: "a whole number", str: "a string"}[expected]
                raise ValueError(f"{repository.SERVING_FILE}: {name} must be {kind}, got {json.dumps(value)}")
        return dataclasses.replace(self.settings, bundle=str(item.path), model_name=model.name, **overrides)

    def _refuse(self, model: Model, item: Found, reason: str, current: Loaded | None) -> Loaded | None:
        model.refused[item.version] = (item.fingerprint, reason)
        serving = sorted(model.loaded, key=int)
        log.error(
            "model version refused",
            extra={
                "fields": {
                    "model": model.name,
                    "version": item.version,
                    "path": str(item.path),
                    "reason": reason,
                    "still_serving": serving,
                }
            },
        )
        return current

    def _remove(self, name: str) -> None:
        model = self.models.pop(name)
        log.info("model removed from the repository", extra={"fields": {"model": name}})
        for loaded in self._take_all(model):
            self._retire(loaded)

    def _retire(self, loaded: Loaded, why: Failure | None = None) -> None:
        """Stop ``loaded`` once its requests are out; inputs still queued after DRAIN_TIMEOUT fail with ``why``."""
        why = why or VersionUnloaded(
            f"model {loaded.name!r} version {loaded.version!r} was unloaded while this request ran; retry it"
        )
        task = asyncio.get_running_loop().create_task(self._drain(loaded, why), name=f"retire-{loaded.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, loaded: Loaded, why: Failure) -> None:
        try:
            await asyncio.wait_for(loaded.idle.wait(), timeout=self.settings.drain_timeout)
        except TimeoutError:
            log.warning(
                "model version stopped with requests still running",
                extra={"fields": {"model": loaded.name, "version": loaded.version, "in_flight": loaded.in_flight}},
            )
        await loaded.engine.stop(why)
        self._forget(loaded.view)
        loaded.engine.free()
        # A session, its arenas and its tokenizers are tens of MB that glibc keeps for reuse unless told to give
        # them back: each version swap would otherwise leave its predecessor's share behind.
        await asyncio.to_thread(release_free_memory)
        log.info("model version unloaded", extra={"fields": {"model": loaded.name, "version": loaded.version}})

    # Serving -----------------------------------------------------------------------

    def default_name(self) -> str:
        if self.settings.default_model:
            return self.settings.default_model
        if len(self.models) == 1:
            return next(iter(self.models))
        if not self.models:
            raise NotReady(self.not_ready_reason)
        raise ModelNotFound(
            f"this server serves several models ({_quoted(sorted(self.models))}): name one, as in "
            "POST /models/NAME/predict, or set DEFAULT_MODEL"
        )

    def resolve(self, name: str | None = None, version: str | None = None) -> Loaded:
        name = name or self.default_name()
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not served here; this server serves {_quoted(sorted(self.models))}")
        loaded = model.loaded  # one read: a swap cannot change it under this request
        if not loaded:
            raise NotReady(model.reason)
        if not version:
            return loaded[max(loaded, key=int)]
        if version == model.shadow_version and model.shadow is not None:
            raise ModelNotFound(
                f"model {name!r} version {version!r} is a shadow: it sees a share of the inputs but never answers; "
                f"clear the shadow to promote it"
            )
        if version not in loaded:
            versions = sorted(loaded, key=int)
            has = f"version {versions[0]!r}" if len(versions) == 1 else f"versions {_quoted(versions)}"
            raise ModelNotFound(f"model {name!r} has no version {version!r}; it has {has}")
        return loaded[version]

    def hold(self, call: Call, name: str | None = None, version: str | None = None) -> Loaded:
        """Resolve a call's model and keep its engine running until ``call.release()``."""
        if call.held is not None:
            return call.held
        name = name or self.default_name()
        if name in self.models:
            call.model = name
        loaded = self.resolve(name, version)
        loaded.acquire()
        call.held = loaded
        return loaded

    def versions(self, name: str) -> list[str]:
        return sorted(self.models[name].loaded, key=int) if name in self.models else []

    @property
    def ready(self) -> bool:
        return self._started and any(model.loaded for model in self.models.values())

    @property
    def not_ready_reason(self) -> str:
        """Why the server is not ready, naming models and their states only. Open routes (/health) answer
        with it, so the reasons, which may name paths on the server's disk, stay in the log and in the
        authenticated repository index."""
        if self._crash:
            return f"{self._crash}; the server log says why"
        if not self._started:
            return LOADING_REASON if self.root is None else "models are loading"
        if not self.models:
            return "the repository holds no model"
        if self.root is None:  # one bundle
            model = next(iter(self.models.values()))
            return LOADING_REASON if model.state == LOADING else "model failed to load; the server log says why"
        return "no model is loaded: " + "; ".join(
            f"{name}: {_public_state(model)}" for name, model in sorted(self.models.items())
        )

    def index(self, *, unloaded: bool = False) -> list[dict[str, str]]:
        """One row per model version, as Triton's repository index; ``unloaded`` adds the repository's
        models that are not loaded."""
        rows = []
        for name, model in sorted(self.models.items()):
            versions = set(model.loaded) | set(model.refused) | ({model.loading} if model.loading else set())
            if not versions:
                rows.append({"name": name, "version": "", "state": model.state, "reason": model.reason})
            if model.shadow is not None:
                versions.add(model.shadow.version)
            for version in sorted(versions, key=int, reverse=True):
                if version in model.loaded:
                    state, reason = READY, ""
                elif model.shadow is not None and version == model.shadow.version:
                    state = READY
                    reason = f"shadow: sees {model.shadow_fraction:g} of the inputs served, never answers"
                elif version == model.loading:
                    state, reason = LOADING, ""
                else:
                    state, reason = UNAVAILABLE, model.refused[version][1]
                rows.append({"name": name, "version": version, "state": state, "reason": reason})
        if unloaded and self.root is not None:
            for name in sorted(set(repository.scan(self.root)) - set(self.models)):
                rows.append({"name": name, "version": "", "state": UNAVAILABLE, "reason": "not loaded"})
            rows.sort(key=lambda row: row["name"])
        return rows
