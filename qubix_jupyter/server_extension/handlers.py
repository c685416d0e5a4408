"""The HTTP boundary: the handler classes that every route of the table goes through.

A path whose every method takes a worker token (heartbeat, progress, completion: the routes each
provider calls every few seconds) is served by :class:`WorkerRouteHandler`, a plain tornado
handler: those callers never carry Jupyter's login, so Jupyter's per-request identity work has
nothing to find and only costs time. Every other path goes through :class:`RouteHandler`, a
Jupyter ``APIHandler``. Both dispatch the same way (:class:`_RouteDispatch`): it parses
JSON (size-limited), validates it with the route's pydantic model, authenticates the market's
bearer token, applies the rate limit, calls the endpoint and serializes its answer.
:class:`QubixError` becomes the error body of DESIGN.md §6 here and only here; anything else
escapes to tornado, which logs it and calls :meth:`QubixAPIHandler.write_error` for a generic 500.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from http import HTTPStatus
from typing import Any

import psycopg
from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc
from tornado.web import HTTPError, RequestHandler, stream_request_body

from ..db.idempotency_store import Answer, Claim, ClaimTaken
from ..market.errors import QubixError
from .endpoints import Call, Held, Reply, TextReply
from .errors import (
    DatabaseUnavailable,
    Forbidden,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from .query import parse_query
from .routes import Route
from .services import Services

SERVICES = "qubix_services"
OPENAPI = "qubix_openapi"


#: An Idempotency-Key: 1 to 200 printable ASCII characters, no spaces.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _status_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


class _MarketAPI:
    """JSON in, JSON out, the market's own authentication; never a traceback to the client.

    Shared by the Jupyter handlers and the plain tornado one; written against tornado's
    ``RequestHandler`` (``self.request``, ``self.settings``, ``self.log``).
    """

    request: Any
    settings: dict[str, Any]
    log: Any

    @property
    def services(self) -> Services:
        return self.settings[SERVICES]  # type: ignore[no-any-return]

    # ----------------------------------------------------------- browser rules

    def check_xsrf_cookie(self) -> None:
        # The market authenticates with an Authorization header, never a cookie, and a browser
        # does not attach that header to a cross-site request: there is nothing to forge. The
        # operator's routes take Jupyter's login cookie too, so they take its XSRF check.
        routes: dict[str, Route] = getattr(self, "routes", {})
        route = routes.get(self.request.method or "")
        if route is None or route.auth != "operator":
            return None
        if getattr(self, "_jupyter_current_user", None) is None and hasattr(
            self, "_jupyter_current_user"
        ):
            return None  # nobody signed in: nothing to forge, and the route answers its 401
        return super().check_xsrf_cookie()  # type: ignore[no-any-return]

    def check_origin(self, origin_to_satisfy_tornado: str = "") -> bool:
        # Cross-origin callers are refused in _check_origin with a 403 body of ours, rather
        # than the bare 404 Jupyter's APIHandler.prepare would give.
        return True

    def _origin_allowed(self) -> bool:
        origin = self.request.headers.get("Origin")
        if origin is None:
            return True  # not a browser, or a same-origin GET
        if origin.split("://", 1)[-1] == self.request.host:
            return True
        allowed = self.services.allowed_origins
        return "*" in allowed or origin in allowed

    def set_cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin is not None and self._origin_allowed():
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")

    @allow_unauthenticated
    def options(self, *args: Any, **kwargs: Any) -> None:
        """CORS preflight."""
        self.set_header("Access-Control-Allow-Headers", "authorization, content-type")
        self.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    # ----------------------------------------------------------- errors

    def write_qubix_error(self, error: QubixError) -> None:
        """The one place a domain error becomes an HTTP answer."""
        self.clear_header("Content-Type")
        self.set_status(error.status)
        if isinstance(error, RateLimited | DatabaseUnavailable):
            self.set_header("Retry-After", str(error.retry_after))
        if isinstance(error, MethodNotAllowed):
            self.set_header("Allow", ", ".join(error.details.get("allowed", [])))
        self.log.info("qubix API %s %s: %s", self.request.method, self.request.path, error.code)
        self.finish(json.dumps(error.to_body()))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        if value is not None and database_down(value):  # one line, not a traceback a request
            self.log.warning(
                "QUBIX API %s %s: the database does not answer: %s",
                self.request.method,
                self.request.path,
                (str(value).splitlines() or [type(value).__name__])[0],
            )
            return
        super().log_exception(typ, value, tb)  # type: ignore[misc]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's error writer: HTTP errors raised by the framework, and unexpected ones.

        Tornado has logged an unexpected exception (with its traceback) before calling this; the
        client gets only a generic body. A database that does not answer is no bug of ours nor
        the client's mistake: a 503 ``database_unavailable`` to retry after ``Retry-After``.
        """
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if exc is not None and database_down(exc):
            self.write_qubix_error(DatabaseUnavailable())
            return
        if status_code < 500 and isinstance(exc, HTTPError):
            code = _status_code(status_code)
            message = exc.log_message or exc.reason or HTTPStatus(status_code).phrase
        else:
            code = "internal_error"
            message = "internal server error: the market logged the details"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"code": code, "message": message, "details": {}}}))


class _RouteDispatch(_MarketAPI):
    """Serves one path of the route table, every method it lists.

    The body is streamed in so that one over ``max_body_bytes`` is counted, not kept in memory.
    """

    def _start(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self._chunks: list[bytes] = []
        self._received = 0

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self.services.max_body_bytes:
            self._chunks.clear()  # it will be refused with a 413: keep nothing
        else:
            self._chunks.append(chunk)

    @allow_unauthenticated
    async def get(self, **params: str) -> None:
        await self._dispatch(params)

    @allow_unauthenticated
    async def post(self, **params: str) -> None:
        await self._dispatch(params)

    @allow_unauthenticated
    async def put(self, **params: str) -> None:
        await self._dispatch(params)

    @allow_unauthenticated
    async def patch(self, **params: str) -> None:
        await self._dispatch(params)

    @allow_unauthenticated
    async def delete(self, **params: str) -> None:
        await self._dispatch(params)

    async def _dispatch(self, params: dict[str, str]) -> None:
        self._claimed: tuple[str, str] | None = None
        try:
            result = await self._call(params)
        except QubixError as error:
            await self._release_claim()
            self.write_qubix_error(error)
            return
        except BaseException as error:
            if database_down(error):  # see write_error; the release may fail the same way
                with contextlib.suppress(Exception):
                    await self._release_claim()
            else:
                await self._release_claim()
            raise
        if isinstance(result, Answer):  # a retry of a finished request: its first answer
            self.set_status(result.status)
            self.set_header("Idempotent-Replayed", "true")
            self.finish(json.dumps(result.body))
            return
        if isinstance(result, TextReply):
            self.finish(result.text, set_content_type=result.media_type)
            return
        status = 200
        if isinstance(result, Held):
            try:
                await self._store(status, result.stored.model_dump_json(by_alias=True))
            except BaseException:
                result.discard()
                raise
            try:
                result = await result.then()
            except QubixError as error:
                self.write_qubix_error(error)
                return
        elif isinstance(result, Reply):
            status = result.status
            result = result.body
        encoded = result.model_dump_json(by_alias=True)
        await self._store(status, encoded)
        self.set_status(status)
        self.finish(encoded)

    async def _store(self, status: int, encoded: str) -> None:
        """Keep the answer of a claimed Idempotency-Key, for the request's retries."""
        if self._claimed is not None:
            scope, key = self._claimed
            await self.services.idempotency.complete(
                scope, key, status, json.loads(encoded), now=dt.datetime.now(dt.UTC)
            )
            self._claimed = None

    async def _release_claim(self) -> None:
        if self._claimed is not None:
            await self.services.idempotency.release(*self._claimed)
            self._claimed = None

    def on_finish(self) -> None:
        path = next(iter(self.routes.values())).openapi_path
        self.services.metrics.observe(
            path, self.request.method or "", self.get_status(), self.request.request_time()
        )

    async def _call(self, params: dict[str, str]) -> BaseModel | Held | Reply | TextReply | Answer:
        services = self.services
        route = self.routes.get(self.request.method or "")
        if route is None:
            raise MethodNotAllowed(
                f"{self.request.method} is not allowed here", allowed=sorted(self.routes)
            )
        if not self._origin_allowed():
            raise Forbidden(
                "this origin may not call the market API (see QubixExtension.allowed_origins)"
            )
        owner = worker = None
        provisioning = False
        authorization = self.request.headers.get("Authorization")
        if route.auth == "public":
            services.rate_limiter.check(f"ip:{self.request.remote_ip}")
            scope = f"ip:{self.request.remote_ip}"
        elif route.auth == "operator":
            # Jupyter's IdentityProvider ran in prepare(): its token, or its login cookie.
            if self.current_user is None:
                raise Unauthorized(
                    "this route takes the Jupyter server's own authentication "
                    "(Authorization: token <Jupyter token>), not a market token"
                )
            services.rate_limiter.check(f"ip:{self.request.remote_ip}")
            scope = "operator"
        elif route.auth == "worker":
            worker = await services.auth.authenticate_worker(authorization)
            services.rate_limiter.check(f"worker:{worker.token_id}")
            scope = f"worker:{worker.provider_id}"
        elif route.provisioning and services.auth.is_provision_token(authorization):
            owner = await services.auth.authenticate_provisioning(authorization)
            provisioning = True
            services.rate_limiter.check(f"provision:{owner.token_id}")
            scope = f"user:{owner.user.id}"
        else:
            owner = await services.auth.authenticate(authorization)
            services.rate_limiter.check(f"token:{owner.token_id}")
            scope = f"user:{owner.user.id}"
        body = self._body(route)
        query = (
            None if route.query is None else parse_query(route.query, self.request.query_arguments)
        )
        request_key = claim = None
        if route.idempotent:
            request_key, claim = self._request_key(route, scope, params)
            if claim is not None and not (route.claims_in_call and services.idempotency.folds):
                answer = await self._claim(claim)
                if answer is not None:
                    return answer
                claim = None
        call = Call(
            services,
            body,
            params,
            owner,
            self.settings[OPENAPI],
            query,
            worker,
            request_key,
            provisioning,
            f"{self.request.protocol}://{self.request.host}{self.base_url}",
            claim,
        )
        if claim is None:
            return await route.endpoint(call)
        # The endpoint's statement makes the claim: kept (to store the answer under) only once
        # it committed; a statement that failed took its claim back with it.
        await services.idempotency.sweep(claim.at)
        try:
            result = await route.endpoint(call)
        except ClaimTaken:  # a retry, a conflict, or a twin in flight: as any other route
            answer = await self._claim(claim)
            if answer is not None:
                return answer
            return await route.endpoint(dataclasses.replace(call, claim=None))
        self._claimed = (claim.scope, claim.key)
        return result

    async def _claim(self, claim: Claim) -> Answer | None:
        """Claim the key: None, the request runs now; else the stored answer of a retry."""
        answer = await self.services.idempotency.claim(
            claim.scope, claim.key, claim.request_hash, now=claim.at
        )
        if answer is None:
            self._claimed = (claim.scope, claim.key)
        return answer

    def _request_key(
        self, route: Route, scope: str, params: dict[str, str]
    ) -> tuple[str, Claim | None]:
        """The request's key for its ledger operations, and the claim its Idempotency-Key
        makes (to answer its retries).

        Without an Idempotency-Key the request is its own: a random key, nothing claimed.
        """
        header = self.request.headers.get("Idempotency-Key")
        if header is None:
            return f"req:{uuid.uuid4().hex}", None
        if not _IDEMPOTENCY_KEY.fullmatch(header):
            raise ValidationFailed(
                "Idempotency-Key must be 1 to 200 printable ASCII characters without spaces",
                errors=[{"loc": ["header", "Idempotency-Key"], "msg": "bad key", "type": "value"}],
            )
        raw = b"".join(self._chunks)
        try:
            canonical: Any = json.loads(raw) if raw.strip() else {}
        except ValueError:  # pragma: no cover - _body refused it already
            canonical = raw.decode("utf-8", "replace")
        request_hash = hashlib.sha256(
            json.dumps(
                [route.method, route.path, params, canonical], sort_keys=True, default=str
            ).encode()
        ).hexdigest()
        digest = hashlib.sha256(f"{scope}\x00{header}".encode()).hexdigest()[:40]
        return f"req:{digest}", Claim(scope, header, request_hash, dt.datetime.now(dt.UTC))

    def _body(self, route: Route) -> BaseModel | None:
        limit = self.services.max_body_bytes
        if self._received > limit:
            raise PayloadTooLarge(
                f"request body is {self._received} bytes, the limit is {limit}", limit=limit
            )
        raw = b"".join(self._chunks)
        if route.body is None:
            return None
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = json.loads(raw, parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:
                raise InvalidJSON("request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise ValidationFailed(
                "request body must be a JSON object",
                errors=[{"loc": [], "msg": "expected an object", "type": "object_type"}],
            )
        try:
            return route.body.model_validate(data)
        except ValidationError as exc:
            raise ValidationFailed(
                "request body does not match the schema",
                errors=exc.errors(include_url=False, include_input=False, include_context=False),
            ) from exc


class QubixAPIHandler(_MarketAPI, ExtensionHandlerMixin, APIHandler):
    """A Jupyter API handler speaking the market's errors."""


@stream_request_body
class RouteHandler(_RouteDispatch, ExtensionHandlerMixin, APIHandler):
    """A path of the route table through Jupyter's handler stack (identity, host check, …)."""

    def initialize(self, name: str, routes: dict[str, Route]) -> None:  # type: ignore[override]
        super().initialize(name)
        self._start(routes)


@stream_request_body
class WorkerRouteHandler(_RouteDispatch, RequestHandler):
    """A path whose every method takes a worker token, on plain tornado.

    What Jupyter's stack would add is replaced here: JSON content type and a closed content
    security policy on every answer, the market's origin check and CORS headers (in
    :class:`_MarketAPI`), no XSRF check (a worker token is a header, never a cookie), and
    Jupyter's request log for what is worth a line (see :meth:`_log`).
    """

    def initialize(self, routes: dict[str, Route]) -> None:  # type: ignore[override]
        self._start(routes)

    @property
    def log(self) -> Any:  # type: ignore[override]
        return self.settings["serverapp"].log

    @property
    def base_url(self) -> str:
        return str(self.settings.get("base_url", "/"))

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Security-Policy", "default-src 'none'")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_cors_headers()

    def check_xsrf_cookie(self) -> None:
        return None

    def _log(self) -> None:
        # Jupyter's request log writes a success at DEBUG level and times it in its Prometheus
        # histogram: at thousands of heartbeats a second that is a tenth of the server's CPU
        # for a line nobody reads. Successes are counted in the market's own qubix_http_*
        # metrics (on_finish); anything else, or a DEBUG log, goes through Jupyter's as before.
        if self.get_status() < 300 and not _writes_debug(self.log):
            return
        super()._log()

    def finish(self, chunk: Any = None, set_content_type: str = "application/json") -> Any:
        self.set_header("Content-Type", set_content_type)
        return super().finish(chunk)


def _writes_debug(logger: logging.Logger) -> bool:
    """Whether a DEBUG record of ``logger`` would be written anywhere.

    Traitlets leaves its application loggers at DEBUG and filters in the handlers, so
    ``isEnabledFor`` is always true there: ask the handlers.
    """
    if not logger.isEnabledFor(logging.DEBUG):
        return False
    current: logging.Logger | None = logger
    while current is not None:
        if any(h.level <= logging.DEBUG for h in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


def database_down(error: BaseException) -> bool:
    """Whether ``error`` says the database did not answer (a lost or refused connection, a
    server shutting down, a pool with no connection to give) or refused for a passing reason
    (psycopg's OperationalError: a deadlock or serialization failure that outlasted its
    retries, a cancelled statement), not that a statement was wrong."""
    if isinstance(error, sa_exc.TimeoutError):  # the pool's: no connection within its timeout
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        error = error.orig if error.orig is not None else error
    return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)


def serves_on_tornado(routes: dict[str, Route]) -> bool:
    """Whether a path (its routes by method) is served by :class:`WorkerRouteHandler`."""
    return all(route.auth == "worker" for route in routes.values())


class NotFoundHandler(QubixAPIHandler):
    """Anything under the API prefix that no route matches: a JSON 404, not Jupyter's page."""

    @allow_unauthenticated
    async def get(self, *args: str) -> None:
        self.write_qubix_error(NotFound(f"no API endpoint {self.request.path}"))

    post = put = patch = delete = get
