/**
 * A Temporal `PayloadCodec` that encrypts and decrypts through a remote
 * `codec_grpc.v1.CodecService`: one gRPC call per encode/decode, carrying every
 * payload it is given, over one reused channel.
 */
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { CodecInternalError, errorForStatus } from './errors';

/** codec.proto as shipped inside this package (copied from the repository's protos/ when packed). */
export const PACKAGED_PROTO_PATH = path.join(__dirname, '..', 'protos', 'codec_grpc', 'v1', 'codec.proto');

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
const NAMESPACE_RE = /^[A-Za-z0-9._-]{1,255}$/;

export interface RemotePayloadCodecOptions {
  /** `host:port` of the codec service (any gRPC target). */
  target: string;
  /** Temporal namespace of the payloads: the service binds encrypted payloads to it. Default `"default"`. */
  namespace?: string;
  /** `credentials.createSsl(ca, key, cert)` (re-exported by this package) for TLS or mTLS. Default: plaintext. */
  credentials?: grpc.ChannelCredentials;
  /** Extra request headers (lower-case keys), e.g. `{ authorization: 'Bearer ...' }`. */
  metadata?: Record<string, string>;
  /** Deadline of each call in milliseconds. Default 10000. */
  timeoutMs?: number;
  /** Largest request or answer sent or accepted. Default 16 MiB. */
  maxMessageBytes?: number;
  /** Further grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
  /** Where codec.proto is; default: the copy inside this package. */
  protoPath?: string;
}

/** A payload as @grpc/proto-loader reads and writes codec_grpc.v1.Payload (camelCase fields). */
interface WirePayload {
  metadata?: Record<string, Uint8Array>;
  data?: Uint8Array;
  externalPayloads?: { sizeBytes?: unknown }[];
}

interface WireBatch {
  payloads?: WirePayload[];
}

type Unary = (
  request: WireBatch & { namespace: string },
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, answer?: WireBatch) => void,
) => grpc.ClientUnaryCall;

const serviceClients = new Map<string, grpc.ServiceClientConstructor>();

function serviceClient(protoPath: string): grpc.ServiceClientConstructor {
  let client = serviceClients.get(protoPath);
  if (client === undefined) {
    const definition = protoLoader.loadSync(protoPath, { keepCase: false, defaults: false });
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
      codec_grpc: { v1: { CodecService: grpc.ServiceClientConstructor } };
    };
    client = loaded.codec_grpc.v1.CodecService;
    serviceClients.set(protoPath, client);
  }
  return client;
}

export class RemotePayloadCodec implements PayloadCodec {
  readonly namespace: string;
  private readonly metadata: grpc.Metadata;
  private readonly timeoutMs: number;
  private readonly openClient: () => grpc.Client;
  private client?: grpc.Client;

  constructor(options: RemotePayloadCodecOptions) {
    const { target, namespace = 'default', timeoutMs = DEFAULT_TIMEOUT_MS } = options;
    const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    if (!target) throw new TypeError("target must be host:port of the codec service, got ''");
    if (!NAMESPACE_RE.test(namespace)) {
      throw new TypeError(
        `namespace must be a Temporal namespace name (letters, digits, '.', '_', '-'), got '${namespace}'`,
      );
    }
    if (!(timeoutMs > 0)) throw new TypeError(`timeoutMs must be a positive number, got ${timeoutMs}`);
    if (!(maxMessageBytes >= 1024)) {
      throw new TypeError(`maxMessageBytes must be at least 1024, got ${maxMessageBytes}`);
    }
    this.namespace = namespace;
    this.timeoutMs = timeoutMs;
    this.metadata = requestMetadata(namespace, options.metadata ?? {});
    const Client = serviceClient(options.protoPath ?? PACKAGED_PROTO_PATH);
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    const channelOptions = {
      'grpc.max_send_message_length': maxMessageBytes,
      'grpc.max_receive_message_length': maxMessageBytes,
      ...options.channelOptions,
    };
    // The channel opens on first use, and again after close().
    this.openClient = () => new Client(target, credentials, channelOptions);
  }

  /** Encrypt every payload in one call. */
  encode(payloads: Payload[]): Promise<Payload[]> {
    return this.call('Encode', payloads);
  }

  /** Decrypt every `binary/encrypted` payload; others come back unchanged. */
  decode(payloads: Payload[]): Promise<Payload[]> {
    return this.call('Decode', payloads);
  }

  /** Close the channel; a later call opens a new one. */
  close(): void {
    this.client?.close();
    this.client = undefined;
  }

  private async call(operation: 'Encode' | 'Decode', payloads: Payload[]): Promise<Payload[]> {
    if (payloads.length === 0) return [];
    this.client ??= this.openClient();
    const method = (this.client as unknown as Record<string, Unary>)[operation].bind(this.client);
    const request = { payloads: payloads.map(toWire), namespace: this.namespace };
    const answer = await new Promise<WireBatch>((resolve, reject) => {
      method(request, this.metadata, { deadline: Date.now() + this.timeoutMs }, (error, response) => {
        if (error) reject(errorForStatus(operation, error.code, error.details));
        else resolve(response ?? {});
      });
    });
    const result = (answer.payloads ?? []).map(fromWire);
    if (result.length !== payloads.length) {
      throw new CodecInternalError(
        `codec service ${operation} answered ${result.length} payloads for ${payloads.length}; ` +
          'is the target a CodecService?',
      );
    }
    return result;
  }
}

function requestMetadata(namespace: string, extra: Record<string, string>): grpc.Metadata {
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries(extra)) {
    if (key !== key.toLowerCase() || key === 'x-namespace') {
      throw new TypeError(`metadata keys must be lower case and not 'x-namespace' (use namespace), got '${key}'`);
    }
    metadata.set(key, value);
  }
  metadata.set('x-namespace', namespace);
  return metadata;
}

// Temporal's Payload (protobufjs, from @temporalio/proto) and proto-loader's object share
// field names and types: only absent (null/undefined) fields need normalizing.
function toWire(payload: Payload): WirePayload {
  return {
    metadata: payload.metadata ?? {},
    data: payload.data ?? new Uint8Array(),
    externalPayloads: (payload.externalPayloads ?? []).map((details) => ({ sizeBytes: details.sizeBytes ?? 0 })),
  };
}

function fromWire(wire: WirePayload): Payload {
  const payload: Payload = { metadata: wire.metadata ?? {}, data: wire.data ?? new Uint8Array() };
  if (wire.externalPayloads?.length) {
    payload.externalPayloads = wire.externalPayloads as NonNullable<Payload['externalPayloads']>;
  }
  return payload;
}
