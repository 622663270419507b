"""The HTTP layer: a FastAPI application over :class:`~edgekd.serve.InferenceServer`, run by uvicorn.

Routes (``{v}`` is the optional ``/versions/1``):

=====================================  =====================================================================
``GET  /v2/health/live``, ``/ready``   liveness and readiness (no API key needed: for load balancers)
``GET  /v2``                           server metadata
``GET  /v2/models/NAME{v}``            model metadata: inputs and outputs with datatype and shape
``GET  /v2/models/NAME{v}/ready``      model readiness
``POST /v2/models/NAME{v}/infer``      Open Inference Protocol inference (JSON or binary tensor data)
``POST /v2/models/NAME{v}/classify``   an encoded image (PNG, JPEG...): labels and probabilities, or a FHIR
                                       DiagnosticReport with ``?format=fhir``
``GET  /metrics``                      Prometheus text format
=====================================  =====================================================================

FastAPI and uvicorn are the optional ``serve`` extra: they are imported when a server is built, and their
absence is a :class:`~edgekd.errors.DependencyError` (exit 5) naming ``pip install 'edgekd[serve]'``. Request
bodies are read incrementally up to the size limit (413 beyond it, before the rest is read). Uvicorn's
access log is off: request lines could carry identifiers, and nothing about a request is logged.

Shutdown on SIGTERM drains (what Kubernetes and most load balancers expect): readiness answers 503 at once,
every request keeps being answered for ``drain_s`` seconds (:class:`~edgekd.serve.ServeConfig`), then uvicorn
stops accepting connections, finishes the requests in flight and exits. A second SIGTERM, or SIGINT (Ctrl-C),
skips the wait. ``GET /openapi.json`` describes the routes (OpenAPI 3.1, for clients and for the fuzz tests);
like every route but health it needs the API key when one is set.

The routes are plain Starlette routes of the FastAPI application: request bodies are raw bytes (binary tensor
data, images), so FastAPI's body parsing and dependency injection would only add per-request cost.

Example:
    >>> with running_server(load_models(["bundles/tiny"]), ServeConfig(port=0)) as url:
    ...     httpx.get(f"{url}/v2/health/ready").status_code
    200
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from edgekd import __version__
from edgekd.errors import DependencyError
from edgekd.serve._model import LoadedModel
from edgekd.serve._protocol import ProtocolError, error_body
from edgekd.serve._server import InferenceServer, Reply, ServeConfig

__all__ = ["create_app", "require_serve_deps", "running_server", "serve_models", "bind_socket"]


def require_serve_deps() -> tuple[Any, Any]:
    """``(fastapi, uvicorn)``, or a :class:`DependencyError` (exit 5) that names the extra to install."""
    try:
        import fastapi
        import uvicorn
    except ImportError as e:
        raise DependencyError(
            f"edgekd serve needs {e.name or 'fastapi and uvicorn'}, which is not installed",
            "pip install 'edgekd[serve]'",
        ) from e
    return fastapi, uvicorn


async def _read_body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(413, f"request body of {int(declared):,} bytes exceeds the {limit:,}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"request body exceeds the {limit:,}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _routes(server: InferenceServer) -> list[tuple[str, str, str, bool, Callable]]:
    """(path, route name, method, public, handler(request) -> awaitable Reply)."""
    limit = server.config.max_body_bytes

    def version(r: Any) -> str:
        return r.path_params.get("version", "")

    async def infer(r: Any) -> Reply:
        body = await _read_body(r, limit)
        return await server.infer(r.path_params["name"], version(r), body, r.headers)

    async def classify(r: Any) -> Reply:
        body = await _read_body(r, limit)
        return await server.classify(r.path_params["name"], version(r), body, r.headers, r.query_params.get("format"))

    routes = []
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):  # the hot routes are matched first
        routes += [
            (f"{base}/infer", "infer", "POST", False, infer),
            (f"{base}/classify", "classify", "POST", False, classify),
            (base, "model_metadata", "GET", False, lambda r: server.model_metadata(r.path_params["name"], version(r))),
            (
                f"{base}/ready",
                "model_ready",
                "GET",
                False,
                lambda r: server.model_ready(r.path_params["name"], version(r)),
            ),
        ]
    routes += [
        ("/v2/health/live", "live", "GET", True, lambda r: server.live()),
        ("/v2/health/ready", "ready", "GET", True, lambda r: server.ready()),
        ("/v2", "server_metadata", "GET", False, lambda r: server.server_metadata()),
        ("/metrics", "metrics", "GET", False, lambda r: server.metrics_text()),
        ("/openapi.json", "openapi", "GET", False, lambda r: server.openapi()),
    ]
    return routes


def _error_reply(e: ProtocolError) -> Reply:
    headers = {"Content-Type": "application/json"}
    if e.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="edgekd"'
    return Reply(e.status, error_body(e.message), headers)


def create_app(server: InferenceServer) -> Any:
    """The FastAPI application serving ``server`` (its batchers start and stop with the app's lifespan)."""
    fastapi, _ = require_serve_deps()
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = fastapi.FastAPI(
        title="edgekd serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.exception_handler(HTTPException)
    async def _not_found(_request: Request, exc: HTTPException) -> Response:  # unknown routes, wrong methods
        reply = _error_reply(ProtocolError(exc.status_code, str(exc.detail)))
        return Response(reply.body, reply.status, headers=reply.headers)

    def add(path: str, name: str, method: str, public: bool, handler: Callable) -> None:
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                if not public:
                    server.authorize(request.headers.get("authorization"))
                reply = await handler(request)
            except ProtocolError as e:
                reply = _error_reply(e)
            model = server.metric_model(request.path_params.get("name"))
            server.metrics.observe_request(model, name, reply.status, time.perf_counter() - t0)
            return Response(reply.body, reply.status, headers=reply.headers)

        app.add_route(path, endpoint, methods=[method], name=f"{name} {path}", include_in_schema=False)

    for route in _routes(server):
        add(*route)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: any free port).

    Raises:
        DependencyError: the address is in use or cannot be bound (exit 5).
    """
    host = "127.0.0.1" if host == "localhost" else host
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DependencyError(
            f"cannot listen on {host}:{port}: {e.strerror or e}", "choose another --port (0 picks a free one)"
        ) from e
    sock.listen(1024)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(server: InferenceServer) -> Any:
    _, uvicorn = require_serve_deps()
    config = uvicorn.Config(
        create_app(server),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        lifespan="on",
        timeout_graceful_shutdown=30,
    )

    class DrainingServer(uvicorn.Server):
        """uvicorn's server whose first SIGTERM drains (readiness false, still answering) before stopping."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig != signal.SIGTERM or server.draining or server.config.drain_s <= 0:
                return super().handle_exit(sig, frame)
            server.begin_drain()
            timer = threading.Timer(server.config.drain_s, super().handle_exit, args=(sig, frame))
            timer.daemon = True
            timer.start()

    return DrainingServer(config)


def serve_models(
    models: Mapping[str, LoadedModel], config: ServeConfig, *, log: Callable[[str], None] | None = None
) -> None:
    """Serve ``models`` until interrupted (SIGINT/SIGTERM stop it gracefully).

    Args:
        models: served name -> loaded model (see :func:`~edgekd.serve.load_models`).
        config: host, port, batching, limits, API key.
        log: called once with the URL the server listens on, after the socket is bound.

    Raises:
        InvalidInputError: bad settings (exit 3); DependencyError: no fastapi/uvicorn, or a busy port (exit 5).
    """
    server = InferenceServer(models, config)
    userver = _uvicorn_server(server)
    sock = bind_socket(config.host, config.port)
    try:
        if log is not None:
            log(_url(sock))
        userver.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def running_server(models: Mapping[str, LoadedModel], config: ServeConfig, *, timeout_s: float = 30.0) -> Iterator[str]:
    """Run a real uvicorn server in a background thread; yields its base URL and stops it on exit.

    Example:
        >>> with running_server(models, ServeConfig(port=0, max_batch=8)) as url:
        ...     client = tritonclient.http.InferenceServerClient(url.removeprefix("http://"))
    """
    server = InferenceServer(models, config)
    userver = _uvicorn_server(server)
    sock = bind_socket(config.host, config.port)
    thread = threading.Thread(target=userver.run, kwargs={"sockets": [sock]}, name="edgekd-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not userver.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            userver.should_exit = True
            sock.close()
            raise DependencyError("the server did not start", "run with EDGEKD_DEBUG=1 and see the log above")
        time.sleep(0.01)
    try:
        yield _url(sock)
    finally:
        userver.should_exit = True
        thread.join(timeout_s)
        sock.close()
