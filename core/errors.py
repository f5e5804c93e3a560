class DomainError(Exception):
    """A business rule refused an operation; the message is safe to show to the caller."""

    code = "domain_error"

    def __init__(self, message: str, *, code: str | None = None, details: object = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details


class NotFound(DomainError):
    code = "not_found"


class ValidationFailed(DomainError):
    code = "invalid"
