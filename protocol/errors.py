"""Typed errors of the update wire format: every way a message can be rejected has its own class."""

from __future__ import annotations


class WireFormatError(ValueError):
    """A message is not a valid v1 update (base class; the message says what is wrong)."""


class TruncatedMessageError(WireFormatError):
    """A field or section would read past the end of the buffer."""


class TrailingBytesError(WireFormatError):
    """Bytes remain after the checksum."""


class BadMagicError(WireFormatError):
    """The message does not start with the b"FKUP" magic."""


class UnsupportedVersionError(WireFormatError):
    """The format version (or a reserved flag) is not one this decoder knows."""


class ChecksumError(WireFormatError):
    """The CRC-32 trailer does not match the bytes."""


class StageError(WireFormatError):
    """A stage record is unknown, has the wrong length or parameters, or the stage order is invalid."""


class LayoutMismatchError(WireFormatError):
    """The message's dimension does not match the expected model layout."""


class InvalidValueError(WireFormatError):
    """A decoded value is out of range: NaN/Inf, a negative scale, an index past the end, non-zero padding."""


class PipelineInputError(ValueError):
    """The encoder was given bad input (wrong shape, NaN/Inf, mismatched seeds or phone ids)."""
