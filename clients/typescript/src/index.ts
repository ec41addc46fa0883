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
