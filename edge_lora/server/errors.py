"""The server's errors: OpenAI's error body, and the one mapping of library errors to HTTP statuses."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..errors import (
    ContextOverflowError,
    GGUFFileError,
    IncompatibleAdapterError,
    InvalidRequestError,
    NonFiniteLogitsError,
    UnknownAdapterError,
)


class ApiError(Exception):
    """An HTTP error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def error_for(exc: BaseException) -> ApiError:
    """The HTTP status and body of a library error (anything else is a 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnknownAdapterError):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return ApiError(400, str(exc), param=exc.param)
    if isinstance(exc, (IncompatibleAdapterError, GGUFFileError)):
        return ApiError(400, str(exc))
    if isinstance(exc, NonFiniteLogitsError):
        return ApiError(422, str(exc), param="adapters", code="non_finite_logits")
    return ApiError(500, str(exc), kind="server_error")
