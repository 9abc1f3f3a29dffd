"""Typed errors of the privacy package: bad settings and exhausted budgets."""

from __future__ import annotations


class PrivacyError(ValueError):
    """Base class for privacy-package errors."""


class PrivacyConfigError(PrivacyError):
    """A DP setting is invalid or unsafe (the message says why)."""


class BudgetExhaustedError(PrivacyError):
    """Recording another round would exceed the privacy budget."""
