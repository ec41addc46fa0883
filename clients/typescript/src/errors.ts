/**
 * Errors raised by RemotePayloadCodec; the same tree as the Python client's.
 *
 *     CodecServiceError                 base: code, details, retryable
 *     ├── CodecUnavailableError         RETRYABLE: service unreachable, timed out, or its KMS
 *     │                                 unavailable (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED)
 *     ├── CodecRejectedError            the service refused these payloads; the same call fails again
 *     │   ├── CodecPermissionError      PERMISSION_DENIED, UNAUTHENTICATED: another namespace's payload
 *     │   └── CodecInvalidPayloadError  INVALID_ARGUMENT: tampered or undecodable payload
 *     └── CodecInternalError            the service failed, or answered the wrong number of payloads
 *
 * `errorForStatus` is the one place that maps gRPC status codes to these classes.
 */
import { status } from '@grpc/grpc-js';

export class CodecServiceError extends Error {
  /** Whether the same call can succeed if tried again later. */
  readonly retryable: boolean = false;

  constructor(
    message: string,
    /** The gRPC status code; undefined when the service answered something unusable. */
    readonly code?: status,
    /** The server's message: names the failing payload, never its contents. */
    readonly details: string = '',
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Retryable: the service (or the KMS behind it) is unreachable, overloaded or too slow. */
export class CodecUnavailableError extends CodecServiceError {
  override readonly retryable = true;
}

/** Not retryable: the service refused these payloads and would refuse them again. */
export class CodecRejectedError extends CodecServiceError {}

/** Not retryable: the payloads belong to another namespace, or KMS access was denied. */
export class CodecPermissionError extends CodecRejectedError {}

/** Not retryable: a payload was altered or encrypted under another key. */
export class CodecInvalidPayloadError extends CodecRejectedError {}

/** Not retryable as such: the service failed (its log has the details) or answered wrongly. */
export class CodecInternalError extends CodecServiceError {}

type ErrorClass = new (message: string, code?: status, details?: string) => CodecServiceError;

const ERROR_BY_STATUS: ReadonlyMap<status, ErrorClass> = new Map<status, ErrorClass>([
  [status.UNAVAILABLE, CodecUnavailableError],
  [status.DEADLINE_EXCEEDED, CodecUnavailableError],
  [status.ABORTED, CodecUnavailableError],
  [status.CANCELLED, CodecUnavailableError],
  [status.PERMISSION_DENIED, CodecPermissionError],
  [status.UNAUTHENTICATED, CodecPermissionError],
  [status.INVALID_ARGUMENT, CodecInvalidPayloadError],
  [status.FAILED_PRECONDITION, CodecRejectedError],
  [status.RESOURCE_EXHAUSTED, CodecRejectedError],
  [status.OUT_OF_RANGE, CodecRejectedError],
  [status.NOT_FOUND, CodecRejectedError],
  [status.ALREADY_EXISTS, CodecRejectedError],
  [status.UNIMPLEMENTED, CodecRejectedError],
]);

/** The error for a failed `operation` ("Encode", "Decode") call. */
export function errorForStatus(operation: string, code: status, details: string): CodecServiceError {
  const ErrorType = ERROR_BY_STATUS.get(code) ?? CodecInternalError;
  return new ErrorType(`codec service ${operation} failed: ${status[code]}: ${details}`, code, details);
}
