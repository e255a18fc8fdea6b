"""OpenAI's error shape for every failure the API reports: `{"error": {"message", "type", "param", "code"}}`.

`ApiError` is what handlers raise; `install(app)` turns it, FastAPI's request-validation errors (a 400 naming the first
bad field, never FastAPI's own 422) and Starlette's HTTP errors into that shape, so a client always gets one JSON form.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_message(exc: RequestValidationError) -> tuple[str, str | None, str | None]:
    """(message, param, code) for the first problem of a request that failed validation."""
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    text = first.get("msg", "invalid request")
    return (f"{param}: {text}" if param else text), param, first.get("type")


async def _api_error(request, exc: ApiError):
    return exc.response()


async def _invalid(request, exc: RequestValidationError):
    message, param, code = validation_message(exc)
    return JSONResponse(error_body(message, param=param, code=code), status_code=400)


async def _http_error(request, exc: StarletteHTTPException):
    return JSONResponse(error_body(str(exc.detail), code=str(exc.status_code)), status_code=exc.status_code)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
