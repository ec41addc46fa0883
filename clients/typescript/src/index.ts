// grpc-js's credentials, re-exported so TLS options come from the same grpc-js copy the codec uses.
export { credentials } from '@grpc/grpc-js';
export { PACKAGED_PROTO_PATH, RemotePayloadCodec } from './codec';
export type { RemotePayloadCodecOptions } from './codec';
export {
  CodecInternalError,
  CodecInvalidPayloadError,
  CodecPermissionError,
  CodecRejectedError,
  CodecServiceError,
  CodecUnavailableError,
  errorForStatus,
} from './errors';
