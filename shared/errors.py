"""Typed errors. Each carries the HTTP status and error code a client sees."""
from __future__ import annotations


class GenqError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class InvalidRequest(GenqError):
    status = 400
    code = "invalid_request"


class UnknownModel(GenqError):
    status = 400
    code = "unknown_model"


class ModelUnavailable(GenqError):
    """The registry names the model but its weights are not on this machine
    (`shared.model_files.weights_of`): a job for it could not run."""

    status = 400
    code = "model_unavailable"


class LimitExceeded(GenqError):
    status = 400
    code = "limit_exceeded"


class NotFound(GenqError):
    status = 404
    code = "not_found"


class Conflict(GenqError):
    status = 409
    code = "conflict"


class QuotaExceeded(GenqError):
    status = 429
    code = "quota_exceeded"


class DatabaseUnavailable(GenqError):
    """The database cannot be reached now, or is too busy (every pooled connection stayed
    in use past the pool's wait, a lock wait given up): a retry may succeed."""

    status = 503
    code = "database_unavailable"


class ConfigError(Exception):
    """The operator's configuration (settings, registry) is wrong: fail at start, loudly."""
