// grpc-js's credentials, re-exported so TLS options come from the same grpc-js copy the codec uses.
export { credentials } from '@grpc/grpc-js';
export { PACKAGED_PROTO_PATH, RemotePayloadCodec } from './codec';
export type { RemotePayloadCodecOptions } from './codec';
export { dataConverter, FAILURE_CONVERTER_PATH } from './converter';
export type { DataConverterOptions } from './converter';
export {
  CodecInternalError,
  CodecInvalidPayloadError,
  CodecPermissionError,
  CodecRejectedError,
  CodecServiceError,
  CodecUnavailableError,
  errorForStatus,
} from './errors';
