"""The OpenAPI schema of an app, read from the plans the compiler built for its routes.

When a route is registered, the compiler records in each plan one :class:`~tachyon_api.compiler.Parameter`
per request parameter (where the value comes from, the name looked up, the effective type with its
constraints, the default, the marker) and the dependencies it calls, each with its own plan. The generator
reads those records and nothing else, so the schema documents exactly what the extractors do. JSON Schemas
come from msgspec (``msgspec.json.schema_components``), the same library that validates the requests, so
constraints such as
``Meta(ge=1, max_length=20, pattern=...)`` appear in the schema because they are enforced.

OpenAPI 3.1.0 (JSON Schema 2020-12) is the default; an ``openapi_version`` starting with ``3.0`` gives 3.0
output (``nullable: true`` instead of ``anyOf`` with ``null``). The schema is built once, on first use, and
again only after routes, paths or schemas are added; :meth:`OpenAPIGenerator.encode` keeps the JSON bytes
that ``/openapi.json`` serves.
"""

from __future__ import annotations

import copy
import dataclasses
import http
import inspect
import re
from collections.abc import Iterable
from typing import Any

import msgspec

from .compiler import (
    Dependency,
    Parameter,
    Plan,
    compile_dependency,
    compile_endpoint,
)
from .introspection import is_model, is_upload, list_item, strip_annotated, unwrap_optional
from .routing import Route
from .schemas import (
    REF_TEMPLATE,
    TypeSchemas,
    build_components_for_struct,
    build_param_schema,
    document_to_30,
    to_builtin,
)

__all__ = [
    "OpenAPIConfig",
    "Info",
    "Contact",
    "License",
    "Server",
    "create_openapi_config",
    "OpenAPIGenerator",
    "build_param_schema",
    "build_components_for_struct",
]

_NO_BODY_STATUS = frozenset((204, 205, 304))


# --- configuration -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Contact:
    """The API's contact (OpenAPI ``info.contact``)."""

    name: str | None = None
    url: str | None = None
    email: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The Contact Object, without the fields left at ``None``."""
        return _drop_none(dataclasses.asdict(self))


@dataclasses.dataclass
class License:
    """The API's licence (``info.license``); ``identifier`` is an SPDX expression (OpenAPI 3.1 only)."""

    name: str
    url: str | None = None
    identifier: str | None = None

    def to_dict(self, openapi_version: str = "3.1.0") -> dict[str, Any]:
        """The License Object for ``openapi_version``: 3.0 has no ``identifier``; in 3.1 ``url`` and
        ``identifier`` exclude each other, and the identifier wins."""
        license_ = _drop_none(dataclasses.asdict(self))
        if openapi_version.startswith("3.0"):
            license_.pop("identifier", None)
        elif "identifier" in license_:
            license_.pop("url", None)
        return license_


@dataclasses.dataclass
class Server:
    """A base URL the API is served at (``servers``)."""

    url: str
    description: str | None = None
    variables: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The Server Object, without the fields left at ``None``."""
        return _drop_none(dataclasses.asdict(self))


@dataclasses.dataclass
class Info:
    """The ``info`` object: title, version and description shown at the top of the docs pages."""

    title: str = "Tachyon API"
    description: str | None = "A fast API built with Tachyon"
    version: str = "0.1.0"
    terms_of_service: str | None = None
    contact: Contact | None = None
    license: License | None = None
    summary: str | None = None

    def to_dict(self, openapi_version: str = "3.1.0") -> dict[str, Any]:
        """The Info Object for ``openapi_version`` (``summary`` exists from 3.1 on), with OpenAPI's field
        names (``termsOfService``)."""
        out: dict[str, Any] = {"title": self.title, "version": self.version}
        if self.summary and not openapi_version.startswith("3.0"):
            out["summary"] = self.summary
        if self.description:
            out["description"] = self.description
        if self.terms_of_service:
            out["termsOfService"] = self.terms_of_service
        if self.contact:
            out["contact"] = self.contact.to_dict()
        if self.license:
            out["license"] = self.license.to_dict(openapi_version)
        return out


# The files the docs pages load by default (jsDelivr). With the ``docs`` extra installed, the Swagger UI
# defaults are served by the app itself instead (see docs.py); a URL you set is always used as it is.
SWAGGER_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5"
SWAGGER_JS_URL = f"{SWAGGER_CDN}/swagger-ui-bundle.js"
SWAGGER_CSS_URL = f"{SWAGGER_CDN}/swagger-ui.css"
SWAGGER_FAVICON_URL = f"{SWAGGER_CDN}/favicon-32x32.png"
SCALAR_JS_URL = "https://cdn.jsdelivr.net/npm/@scalar/api-reference"
REDOC_JS_URL = "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"
_ASSET_DEFAULTS = {
    "scalar_js_url": SCALAR_JS_URL,
    "swagger_js_url": SWAGGER_JS_URL,
    "swagger_css_url": SWAGGER_CSS_URL,
    "swagger_favicon_url": SWAGGER_FAVICON_URL,
    "redoc_js_url": REDOC_JS_URL,
}


@dataclasses.dataclass
class OpenAPIConfig:
    """Everything about the schema and the docs pages; pass it as ``Tachyon(openapi_config=...)``.

    Each page URL can be ``None`` to turn that page off. The asset URLs hold the files the pages load: the
    jsDelivr CDN unless you set them (``None`` means that default too). When the ``docs`` extra is installed,
    Swagger UI's default files are served by the app itself under ``swagger_url`` (docs that work without
    internet access). ``scalar_favicon_url`` has no default: the Scalar page then has no icon.
    """

    info: Info = dataclasses.field(default_factory=Info)
    servers: list[Server] = dataclasses.field(default_factory=list)
    openapi_version: str = "3.1.0"
    openapi_url: str | None = "/openapi.json"
    docs_url: str | None = "/docs"
    redoc_url: str | None = "/redoc"
    swagger_url: str | None = "/swagger"
    scalar_js_url: str | None = None
    scalar_favicon_url: str | None = None
    swagger_ui_parameters: dict[str, Any] | None = None
    swagger_favicon_url: str | None = None
    swagger_js_url: str | None = None
    swagger_css_url: str | None = None
    redoc_js_url: str | None = None

    def __post_init__(self) -> None:
        for name, default in _ASSET_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, default)

    @property
    def title(self) -> str:
        return self.info.title

    def to_openapi_dict(self) -> dict[str, Any]:
        """The document's frame, before any route: ``openapi``, ``info``, ``servers`` (when set), empty
        ``paths`` and ``components``."""
        document: dict[str, Any] = {"openapi": self.openapi_version, "info": self.info.to_dict(self.openapi_version)}
        if self.servers:
            document["servers"] = [server.to_dict() for server in self.servers]
        document["paths"] = {}
        document["components"] = {"schemas": {}}
        return document


def create_openapi_config(
    title: str = "Tachyon API",
    description: str | None = "A fast API built with Tachyon",
    version: str = "0.1.0",
    openapi_version: str = "3.1.0",
    docs_url: str | None = "/docs",
    redoc_url: str | None = "/redoc",
    openapi_url: str | None = "/openapi.json",
    contact: Contact | dict[str, Any] | None = None,
    license: License | dict[str, Any] | None = None,
    servers: Iterable[Server | dict[str, Any]] | None = None,
    terms_of_service: str | None = None,
    scalar_js_url: str | None = None,
    scalar_favicon_url: str | None = None,
    swagger_ui_parameters: dict[str, Any] | None = None,
    swagger_favicon_url: str | None = None,
    swagger_js_url: str | None = None,
    swagger_css_url: str | None = None,
    redoc_js_url: str | None = None,
    swagger_url: str | None = "/swagger",
) -> OpenAPIConfig:
    """Build an :class:`OpenAPIConfig` from flat arguments (the existing framework's parameters, plus
    ``swagger_url``). ``contact``, ``license`` and ``servers`` accept the dataclasses or plain dicts."""
    return OpenAPIConfig(
        info=Info(
            title=title,
            description=description,
            version=version,
            terms_of_service=terms_of_service,
            contact=Contact(**contact) if isinstance(contact, dict) else contact,
            license=License(**license) if isinstance(license, dict) else license,
        ),
        servers=[Server(**s) if isinstance(s, dict) else s for s in servers or ()],
        openapi_version=openapi_version,
        openapi_url=openapi_url,
        docs_url=docs_url,
        redoc_url=redoc_url,
        swagger_url=swagger_url,
        scalar_js_url=scalar_js_url,
        scalar_favicon_url=scalar_favicon_url,
        swagger_ui_parameters=swagger_ui_parameters,
        swagger_favicon_url=swagger_favicon_url,
        swagger_js_url=swagger_js_url,
        swagger_css_url=swagger_css_url,
        redoc_js_url=redoc_js_url,
    )


# --- the framework's own response bodies -------------------------------------------------------------------
_ERROR_ITEM = {
    "title": "ValidationError",
    "type": "object",
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        "msg": {"type": "string"},
        "type": {"type": "string"},
    },
    "required": ["loc", "msg", "type"],
}


def _error_body(title: str, code: list[str] | None, errors_required: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "title": title,
        "type": "object",
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "error": {"type": "string"},
            "code": {"type": "string", **({"enum": code} if code else {})},
            "errors": {"type": "array", "items": {"$ref": REF_TEMPLATE.format(name="ValidationError")}},
        },
        "required": ["success", "error", "code", *(["errors"] if errors_required else [])],
    }
    return schema


# ``RequestValidationError.body()`` (422), ``RequestError.body()`` (400, 413), the 500 bodies of responses.py
# (named ResponseValidationError, as tachyon-api 1.3 named its 500 component: generated clients use the name
# as a type), and ``HTTPException``'s ``{"detail": ...}`` (404 for a path value that does not convert).
_FRAMEWORK_SCHEMAS = {
    "ValidationError": _ERROR_ITEM,
    "ValidationErrorResponse": _error_body("ValidationErrorResponse", ["VALIDATION_ERROR"], True),
    "ErrorResponse": _error_body("ErrorResponse", None, False),
    "ResponseValidationError": _error_body(
        "ResponseValidationError", ["INTERNAL_SERVER_ERROR", "RESPONSE_VALIDATION_ERROR"], False
    ),
    "HTTPError": {"title": "HTTPError", "type": "object", "properties": {"detail": {}}, "required": ["detail"]},
}


def _json_response(description: str, name: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(name=name)}}},
    }


# --- the generator -----------------------------------------------------------------------------------------
class OpenAPIGenerator:
    """Builds (and caches) the schema of the routes it is given; ``Tachyon`` gives it every route it adds.

    ``add_path`` and ``add_schema`` add hand-written operations and component schemas; they are merged over
    the generated ones, so they can also replace them.
    """

    def __init__(self, config: OpenAPIConfig | None = None) -> None:
        self.config = config or OpenAPIConfig()
        self._routes: list[Route] = []
        self._paths: dict[str, dict[str, dict[str, Any]]] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._schema: dict[str, Any] | None = None
        self._encoded: tuple[Any, bytes] | None = None

    # --- inputs ----------------------------------------------------------------------------------------
    def add_route(self, route: Route) -> None:
        """Document a compiled HTTP route (the schema is rebuilt on next use)."""
        self._routes.append(route)
        self.invalidate()

    def remove_route(self, route: Route) -> None:
        self._routes = [r for r in self._routes if r is not route]
        self.invalidate()

    def generate_route(self, path: str, method: str, endpoint_func: Any, **kwargs: Any) -> None:
        """Document ``endpoint_func`` as ``method path`` without serving it (tachyon-api 1.3's helper); the
        keyword arguments are the route decorator's (``response_model``, ``tags``, ``summary``...). Its
        signature is compiled as a route's would be, so a parameter it cannot serve is a ``TypeError`` here."""
        route = Route(path, endpoint_func, [method], **kwargs)
        names = frozenset(route.param_names)
        route.plan = compile_endpoint(endpoint_func, names, route.options.get("strict", True))
        route.guards = [
            compile_dependency(dep.dependency, names, use_cache=dep.use_cache)
            for dep in route.dependencies
            if dep.dependency is not None
        ]
        self.add_route(route)

    def add_path(self, path: str, method: str, operation: dict[str, Any]) -> None:
        """Add (or replace) the operation ``method path`` with a hand-written OpenAPI Operation Object."""
        self._paths.setdefault(path, {})[method.lower()] = operation
        self.invalidate()

    def add_schema(self, name: str, schema: dict[str, Any]) -> None:
        """Add (or replace) ``components/schemas/<name>``."""
        self._schemas[name] = schema
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the built schema; the next :meth:`get_openapi_schema` builds it again."""
        self._schema = None

    # --- outputs ---------------------------------------------------------------------------------------
    def get_openapi_schema(self) -> dict[str, Any]:
        """The OpenAPI document as a dict (built on first call, then the same object until routes change)."""
        if self._schema is None:
            self._schema = _Builder(self.config).build(self._routes, self._paths, self._schemas)
        return self._schema

    def encode(self, schema: dict[str, Any]) -> bytes:
        """``schema`` as JSON bytes, encoded once per schema object (what ``/openapi.json`` sends)."""
        encoded = self._encoded
        if encoded is None or encoded[0] is not schema:
            encoded = self._encoded = (schema, msgspec.json.encode(schema))
        return encoded[1]

    def get_swagger_ui_html(self, openapi_url: str, title: str) -> str:
        from .docs import swagger_ui_html

        return swagger_ui_html(self.config, openapi_url, title)

    def get_redoc_html(self, openapi_url: str, title: str) -> str:
        from .docs import redoc_html

        return redoc_html(self.config, openapi_url, title)

    def get_scalar_html(self, openapi_url: str, title: str) -> str:
        from .docs import scalar_html

        return scalar_html(self.config, openapi_url, title)


class OperationInputs:
    """What an operation's plans contain, gathered by walking its guards, endpoint and dependencies."""

    def __init__(self) -> None:
        self.params: list[Parameter] = []
        self.bodies: list[list[Parameter]] = []  # per plan: the JSON body parameters it decodes
        self.form: list[Parameter] = []
        self.security: dict[str, Any] = {}  # scheme name -> the scheme object
        self._seen: set[int] = set()  # cached dependencies run once per request: documented once

    def add_plan(self, plan: Plan) -> None:
        body = []
        for param in plan.params:
            if param.source == "body":
                body.append(param)
            elif param.source in ("form", "file"):
                self.form.append(param)
            elif param.source in ("path", "query", "header", "cookie"):
                self.params.append(param)
        if body:
            self.bodies.append(body)
        for dependency in plan.dependencies:
            self.add_dependency(dependency)

    def add_dependency(self, dependency: Dependency) -> None:
        call = dependency.call
        if dependency.use_cache:
            if id(call) in self._seen:
                return
            self._seen.add(id(call))
        model, name = getattr(call, "model", None), getattr(call, "scheme_name", None)
        if isinstance(name, str) and model is not None:
            # A security scheme (tachyon_api.security, or any object following FastAPI's convention): the
            # credentials it reads are documented by the scheme, not as parameters.
            self.security.setdefault(name, call)
            return
        self.add_plan(dependency.plan)


class _Builder:
    """One build of the document."""

    def __init__(self, config: OpenAPIConfig) -> None:
        self.config = config
        self.types = TypeSchemas()
        self.security_schemes: dict[str, Any] = {}
        self.operation_ids: set[str] = set()

    def build(
        self,
        routes: list[Route],
        extra_paths: dict[str, dict[str, dict[str, Any]]],
        extra_schemas: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for route in routes:
            if route.plan is None or not route.options.get("include_in_schema", True):
                continue
            for method in route.methods:
                operation = self.operation(route, method)
                paths.setdefault(route.path, {})[method.lower()] = operation
        for path, operations in extra_paths.items():
            paths.setdefault(path, {}).update(copy.deepcopy(operations))
        self.types.resolve()

        version = self.config.openapi_version
        schemas = {**copy.deepcopy(_FRAMEWORK_SCHEMAS), **self.types.components, **copy.deepcopy(extra_schemas)}
        components: dict[str, Any] = {"schemas": dict(sorted(schemas.items()))}
        if self.security_schemes:
            components["securitySchemes"] = self.security_schemes
        document = self.config.to_openapi_dict()
        document["paths"] = paths
        document["components"] = components
        if version.startswith("3.0"):
            document_to_30(document)
        return document

    # --- one operation ---------------------------------------------------------------------------------
    def operation(self, route: Route, method: str) -> dict[str, Any]:
        found = OperationInputs()
        for guard in route.guards:
            found.add_dependency(guard)
        found.add_plan(route.plan)  # type: ignore[arg-type]
        options = route.options
        operation: dict[str, Any] = {}
        if route.tags:
            operation["tags"] = list(dict.fromkeys(route.tags))
        summary, description = _summary(route)
        operation["summary"] = summary
        if description:
            operation["description"] = description
        operation["operationId"] = self.operation_id(route, method)

        parameters = self.parameters(route, found.params)
        if parameters:
            operation["parameters"] = parameters
        body = self.request_body(found)
        if body is not None:
            operation["requestBody"] = body
        operation["responses"] = self.responses(route, found, bool(parameters) or body is not None)
        if options.get("deprecated"):
            operation["deprecated"] = True
        if found.security:
            for name, scheme in found.security.items():
                self.security_schemes[name] = _scheme_object(scheme.model)
            operation["security"] = [
                {name: list(getattr(scheme, "scopes", None) or []) for name, scheme in found.security.items()}
            ]
        return operation

    def operation_id(self, route: Route, method: str) -> str:
        wanted = route.options.get("operation_id")
        if not wanted:
            wanted = re.sub(r"\W", "_", f"{route.name or 'endpoint'}{route.path}") + f"_{method.lower()}"
        candidate, n = wanted, 1
        while candidate in self.operation_ids:  # the same function at two paths, or an explicit duplicate
            n += 1
            candidate = f"{wanted}_{n}"
        self.operation_ids.add(candidate)
        return candidate

    def parameters(self, route: Route, params: list[Parameter]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for param in params:
            where = (param.source, param.key.lower() if param.source == "header" else param.key)
            if where in seen:  # read by the endpoint and a dependency: one parameter
                continue
            seen.add(where)
            out.append(self.parameter(param))
        for name in route.param_names:  # a path segment no parameter reads still has to be declared
            if ("path", name) not in seen:
                out.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
        return out

    def parameter(self, param: Parameter) -> dict[str, Any]:
        marker = param.marker
        required = param.required
        extra = _schema_extras(param, required)
        parameter: dict[str, Any] = {"name": param.key, "in": param.source, "required": required}
        description = getattr(marker, "description", None)
        if description:
            parameter["description"] = description
        if getattr(marker, "deprecated", None):
            parameter["deprecated"] = True
        parameter["schema"] = self.types.of(param.type, **extra)
        return parameter

    def request_body(self, found: OperationInputs) -> dict[str, Any] | None:
        if found.form:
            return self.form_body(found.form)
        if not found.bodies:
            return None
        schemas = [self.body_schema(group) for group in found.bodies]
        required = any(param.required for group in found.bodies for param in group)
        body: dict[str, Any] = {}
        descriptions = [
            d for group in found.bodies if len(group) == 1 and (d := getattr(group[0].marker, "description", None))
        ]
        if descriptions:
            body["description"] = descriptions[0]
        # Several plans (a dependency and the endpoint) each decode the whole body: it must satisfy all.
        schema = schemas[0] if len(schemas) == 1 else {"allOf": schemas}
        body["content"] = {"application/json": {"schema": schema}}
        body["required"] = required
        return body

    def body_schema(self, group: list[Parameter]) -> dict[str, Any]:
        if len(group) == 1:
            return self.types.of(group[0].type)
        # Several body parameters are members of one object, named after the parameters.
        return {
            "type": "object",
            "properties": {param.name: self.types.of(param.type) for param in group},
            "required": [param.name for param in group if param.required],
        }

    def form_body(self, fields: list[Parameter]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        plain = True  # only scalar fields: a urlencoded form works as well as multipart
        for param in fields:
            if param.key in properties:
                continue
            if param.source == "file" or is_upload(param.type):
                plain = False
                binary = {"type": "string", "format": "binary"}
                inner = unwrap_optional(param.type)[0]
                properties[param.key] = {"type": "array", "items": binary} if list_item(inner) else binary
            else:
                properties[param.key] = self.types.of(param.type, **_schema_extras(param, param.required))
                plain = plain and not is_model(strip_annotated(param.type))
            if param.required:
                required.append(param.key)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        media = ["application/x-www-form-urlencoded", "multipart/form-data"] if plain else ["multipart/form-data"]
        return {"content": {m: {"schema": schema} for m in media}, "required": bool(required)}

    def responses(self, route: Route, found: OperationInputs, validated: bool) -> dict[str, Any]:
        status = route.status_code or 200
        options = route.options
        success: dict[str, Any] = {"description": options.get("response_description") or _phrase(status)}
        if status not in _NO_BODY_STATUS and status >= 200:
            schema = self.types.of(route.response_model) if route.response_model is not None else {}
            success["content"] = {"application/json": {"schema": schema}}
        responses: dict[str, Any] = {str(status): success}
        if route.param_names:  # a value that does not convert to its type, or that no route matches (empty, "/")
            responses["404"] = _json_response("Not Found: no route for this path value", "HTTPError")
        if found.form:  # a form the parser cannot read (bad multipart, too many parts): RequestError's 400
            responses["400"] = _json_response("Malformed form body", "ErrorResponse")
        if found.form or found.bodies:
            responses["413"] = _json_response("Request body larger than max_body_size", "ErrorResponse")
        if validated:
            responses["422"] = _json_response("Validation Error", "ValidationErrorResponse")
        responses["500"] = _json_response("Internal Server Error", "ResponseValidationError")
        for code, extra in (options.get("responses") or {}).items():
            key = str(code)
            entry = dict(extra)
            model = entry.pop("model", None)
            merged = {**responses.get(key, {}), **entry}
            merged.setdefault("description", _phrase(int(key)) if key.isdigit() else "Response")
            if model is not None:
                merged["content"] = {"application/json": {"schema": self.types.of(model)}}
            responses[key] = merged
        return dict(sorted(responses.items()))


def _schema_extras(param: Parameter, required: bool) -> dict[str, Any]:
    """What the marker and the default add to a parameter's or form field's schema."""
    marker = param.marker
    extra: dict[str, Any] = {}
    for name in ("title", "description") if param.source in ("form", "file") else ("title",):
        value = getattr(marker, name, None)  # a parameter's description belongs to the Parameter Object
        if value:
            extra[name] = value
    examples = getattr(marker, "examples", None)
    if examples:
        extra["examples"] = list(examples)
    if not required:
        default = to_builtin(param.default)
        if default is not ... and (default is not None or unwrap_optional(strip_annotated(param.type))[1]):
            extra["default"] = default
    return extra


def _scheme_object(model: Any) -> dict[str, Any]:
    """A scheme's ``model`` as a Security Scheme Object: a dict, a Struct, or a Pydantic model (FastAPI's)."""
    dump = getattr(model, "model_dump", None)
    if callable(dump):
        dumped: dict[str, Any] = dump(by_alias=True, exclude_none=True)  # a Pydantic model dumps to a dict
        return dumped
    value = to_builtin(model)
    return value if isinstance(value, dict) else {}


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Response"


def _summary(route: Route) -> tuple[str, str | None]:
    """The route's ``summary`` option, else the docstring's first paragraph (its summary line, even when
    wrapped), else the function name in words; the ``description`` option, else the rest of the docstring
    (all of it when the summary was given)."""
    options = route.options
    doc = (inspect.getdoc(route.endpoint) if inspect.isroutine(route.endpoint) else None) or ""
    first, _, rest = doc.partition("\n\n")
    summary = options.get("summary") or " ".join(first.split()) or (route.name or "endpoint").replace("_", " ").title()
    description = options.get("description") or (doc if options.get("summary") else rest.strip())
    return summary, description or None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
