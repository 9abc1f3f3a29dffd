package fedkey.client.wire

/**
 * Typed errors of the update wire format. The names are those of the Python reference
 * (`protocol/errors.py`) so that the shared test vectors name the same classes in both languages.
 */
sealed class WireFormatError(message: String) : IllegalArgumentException(message)

/** A field or section would read past the end of the buffer. */
class TruncatedMessageError(message: String) : WireFormatError(message)

/** Bytes remain between the value section and the checksum. */
class TrailingBytesError(message: String) : WireFormatError(message)

/** The message does not start with "FKUP". */
class BadMagicError(message: String) : WireFormatError(message)

/** The format version or a reserved flag is not one this decoder knows. */
class UnsupportedVersionError(message: String) : WireFormatError(message)

/** The CRC-32 trailer does not match. */
class ChecksumError(message: String) : WireFormatError(message)

/** A stage record is unknown, has the wrong length or parameters, or the stage order is invalid. */
class StageError(message: String) : WireFormatError(message)

/** The message's dimension does not match the model layout. */
class LayoutMismatchError(message: String) : WireFormatError(message)

/** A value is out of range: NaN/Inf, negative scale, bad index, non-zero padding bits, f32 overflow. */
class InvalidValueError(message: String) : WireFormatError(message)

/** The encoder was given bad input (wrong length, NaN/Inf, bad seeds or header fields). */
class PipelineInputError(message: String) : IllegalArgumentException(message)
