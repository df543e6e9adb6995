"""Exceptions of ``cosmic deploy``. A step's error stops the run as a :class:`StepFailed` naming
the step, with the error below (or AWS's own) chained as its cause.

::

    DeployError                anything that stops ``cosmic deploy``: printed, exit 1, run again to resume
    ├── StepFailed             step ``step`` failed; ``__cause__`` is why
    ├── TemplateError          a template (``template``) cannot be read, or a parameter breaks its
    │                          declaration (also a ValueError)
    ├── ImageError             an image could not be built, pushed or found; the message says which
    ├── StackError             stack ``stack`` did not reach a good state; CloudFormation's reasons
    └── SmokeTestError         the deployment does not work end to end; ``rank`` and the check
"""

from __future__ import annotations


class DeployError(Exception):
    """Something that stops the deployment; the message says what to fix."""


class StepFailed(DeployError):
    """A step failed; ``step`` names it, the message says why."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"step '{step}' failed: {reason}")
        self.step = step


class TemplateError(DeployError, ValueError):
    """A template cannot be read, or a parameter value breaks its declaration; ``template`` is its file."""

    def __init__(self, message: str, *, template: str | None = None) -> None:
        super().__init__(message)
        self.template = template


class ImageError(DeployError):
    """An image could not be built, pushed or found; the message says which and why."""


class StackError(DeployError):
    """Stack ``stack`` did not reach a good state; the message carries CloudFormation's reasons."""

    def __init__(self, message: str, *, stack: str) -> None:
        super().__init__(message)
        self.stack = stack


class SmokeTestError(DeployError):
    """The deployment does not work end to end; ``rank`` is the rank that failed its check, if one did."""

    def __init__(self, message: str, *, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank
