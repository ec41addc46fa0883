/**
 * RemotePayloadCodec against a running codec server: CODEC_SERVER_TARGET=host:port.
 * tests/test_typescript_client.py starts the real server and runs these with `npm test`.
 */
import * as assert from 'node:assert/strict';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import {
  Server,
  ServerCredentials,
  status,
  type sendUnaryData,
  type ServerUnaryCall,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import {
  CodecInternalError,
  CodecInvalidPayloadError,
  CodecPermissionError,
  CodecRejectedError,
  CodecServiceError,
  CodecUnavailableError,
  credentials,
  RemotePayloadCodec,
  type RemotePayloadCodecOptions,
} from '../src/index';

const TARGET = process.env.CODEC_SERVER_TARGET;
if (!TARGET) {
  throw new Error(
    'CODEC_SERVER_TARGET is not set: give the host:port of a running codec server ' +
      '(pytest tests/test_typescript_client.py starts one and runs these tests)',
  );
}
// From build/test/ to the repository's protos/: the tests need no packed copy.
const PROTO_PATH = path.resolve(__dirname, '..', '..', '..', '..', 'protos', 'codec_grpc', 'v1', 'codec.proto');
const ENCRYPTED = 'binary/encrypted';
const text = (bytes: Uint8Array | null | undefined): string => Buffer.from(bytes ?? []).toString('utf8');

const opened: RemotePayloadCodec[] = [];
function codec(options: Partial<RemotePayloadCodecOptions> = {}): RemotePayloadCodec {
  const made = new RemotePayloadCodec({ target: TARGET as string, protoPath: PROTO_PATH, ...options });
  opened.push(made);
  return made;
}
const fakes: Server[] = [];
after(() => {
  opened.forEach((made) => made.close());
  fakes.forEach((server) => server.forceShutdown());
});

function plain(index: number): Payload {
  return {
    metadata: { encoding: Buffer.from('json/plain'), index: Buffer.from(String(index)) },
    data: Buffer.from(JSON.stringify({ index, note: `secret note ${index}` })),
  };
}

function assertSamePayloads(actual: Payload[], expected: Payload[]): void {
  const shape = (p: Payload) => ({
    metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, text(v)])),
    data: Buffer.from(p.data ?? []).toString('base64'),
    externalPayloads: (p.externalPayloads ?? []).map((d) => Number(d.sizeBytes)),
  });
  assert.deepEqual(actual.map(shape), expected.map(shape));
}

async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A grpc-js server on loopback answering CodecService methods as told (none: UNIMPLEMENTED). */
async function fakeServer(methods: UntypedServiceImplementation): Promise<{ target: string }> {
  const server = new Server();
  if (Object.keys(methods).length > 0) {
    const loaded = grpc.loadPackageDefinition(protoLoader.loadSync(PROTO_PATH)) as any;
    server.addService(loaded.codec_grpc.v1.CodecService.service, methods);
  }
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  fakes.push(server);
  return { target: `127.0.0.1:${port}` };
}

describe('round trip', () => {
  test('many values from the default payload converter come back equal', async () => {
    const values = Array.from({ length: 200 }, (_, i) => ({ order: `ORD-${i}`, items: ['tea', i], paid: i % 2 === 0 }));
    const others = ['a secret string', null, new Uint8Array([0, 1, 255])];
    const payloads = [...values, ...others].map((value) => defaultPayloadConverter.toPayload(value));
    const subject = codec({ namespace: 'orders' });

    const encoded = await subject.encode(payloads);
    assert.equal(encoded.length, payloads.length);
    for (const payload of encoded) {
      assert.equal(text(payload.metadata?.encoding), ENCRYPTED);
      assert.equal(text(payload.metadata?.['encryption-namespace']), 'orders');
      assert.ok(!Buffer.from(payload.data ?? []).includes('ORD-'));
    }
    const decoded = await subject.decode(encoded);
    assert.deepEqual(
      decoded.map((p) => defaultPayloadConverter.fromPayload(p)),
      [...values, ...others],
    );
  });

  test('external payload details survive', async () => {
    const payload: Payload = { ...plain(1), externalPayloads: [{ sizeBytes: 123456 as never }] };
    const subject = codec();
    const encoded = await subject.encode([payload]);
    assert.equal(encoded[0].externalPayloads, undefined);
    assertSamePayloads(await subject.decode(encoded), [payload]);
  });

  test('credentials re-exported by the package are accepted', async () => {
    const subject = codec({ credentials: credentials.createInsecure() });
    assertSamePayloads(await subject.decode(await subject.encode([plain(5)])), [plain(5)]);
  });

  test('a closed codec opens a new channel on its next call', async () => {
    const subject = codec();
    const encoded = await subject.encode([plain(6)]);
    subject.close();
    subject.close();
    assertSamePayloads(await subject.decode(encoded), [plain(6)]);
  });

  test('empty input gives empty output', async () => {
    assert.deepEqual(await codec().encode([]), []);
    assert.deepEqual(await codec().decode([]), []);
  });
});

describe('pass-through', () => {
  test('unencrypted payloads come back unchanged, in order, between decrypted ones', async () => {
    const subject = codec();
    const [one, three] = await subject.encode([plain(1), plain(3)]);
    const decoded = await subject.decode([plain(0), one, plain(2), three, {}]);
    assertSamePayloads(decoded, [plain(0), plain(1), plain(2), plain(3), { metadata: {}, data: new Uint8Array() }]);
  });
});

describe('namespace', () => {
  test('a payload written for one namespace is refused under another', async () => {
    const encoded = await codec({ namespace: 'ns-a' }).encode([plain(1)]);
    await assert.rejects(codec({ namespace: 'ns-b' }).decode(encoded), (error: unknown) => {
      assert.ok(error instanceof CodecPermissionError);
      assert.equal(error.code, status.PERMISSION_DENIED);
      assert.equal(error.retryable, false);
      assert.match(error.details, /'ns-a'.*'ns-b'/);
      assert.match(error.message, /^codec service Decode failed: PERMISSION_DENIED: payload 0:/);
      return true;
    });
  });

  test('the same namespace decodes it', async () => {
    const encoded = await codec({ namespace: 'ns-a' }).encode([plain(1)]);
    assertSamePayloads(await codec({ namespace: 'ns-a' }).decode(encoded), [plain(1)]);
  });
});

describe('errors', () => {
  test('a tampered payload is refused, naming its index', async () => {
    const subject = codec();
    const encoded = await subject.encode([plain(1), plain(2)]);
    const data = Buffer.from(encoded[1].data ?? []);
    data[data.length - 1] ^= 1;
    await assert.rejects(subject.decode([encoded[0], { ...encoded[1], data }]), (error: unknown) => {
      assert.ok(error instanceof CodecInvalidPayloadError);
      assert.equal(error.code, status.INVALID_ARGUMENT);
      assert.match(error.details, /^payload 1: decryption failed/);
      return true;
    });
  });

  test('nothing listening is a retryable CodecUnavailableError', async () => {
    const subject = codec({ target: `127.0.0.1:${await closedPort()}` });
    await assert.rejects(subject.encode([plain(1)]), (error: unknown) => {
      assert.ok(error instanceof CodecUnavailableError);
      assert.ok(error instanceof CodecServiceError);
      assert.equal(error.code, status.UNAVAILABLE);
      assert.equal(error.retryable, true);
      return true;
    });
  });

  test('a server without CodecService: UNIMPLEMENTED is a CodecRejectedError', async () => {
    const fake = await fakeServer({});
    await assert.rejects(codec({ target: fake.target }).encode([plain(1)]), (error: unknown) => {
      assert.ok(error instanceof CodecRejectedError);
      assert.equal(error.code, status.UNIMPLEMENTED);
      assert.equal(error.retryable, false);
      return true;
    });
  });

  test('an answer with another payload count is a CodecInternalError', async () => {
    const fake = await fakeServer({
      Encode: (call: ServerUnaryCall<any, any>, callback: sendUnaryData<any>) =>
        callback(null, { payloads: call.request.payloads.slice(1) }),
    });
    await assert.rejects(codec({ target: fake.target }).encode([plain(1), plain(2)]), (error: unknown) => {
      assert.ok(error instanceof CodecInternalError);
      assert.match(error.message, /answered 1 payloads for 2/);
      return true;
    });
  });

  test('a call past its deadline is a retryable CodecUnavailableError', async () => {
    const fake = await fakeServer({ Encode: () => undefined /* never answers */ });
    await assert.rejects(codec({ target: fake.target, timeoutMs: 200 }).encode([plain(1)]), (error: unknown) => {
      assert.ok(error instanceof CodecUnavailableError);
      assert.equal(error.code, status.DEADLINE_EXCEEDED);
      return true;
    });
  });

  test('invalid options are refused up front', () => {
    assert.throws(() => codec({ target: '' }), /target must be host:port/);
    assert.throws(() => codec({ namespace: 'bad namespace' }), /namespace must be a Temporal namespace name/);
    assert.throws(() => codec({ timeoutMs: 0 }), /timeoutMs must be a positive number/);
    assert.throws(() => codec({ metadata: { Authorization: 'x' } }), /metadata keys must be lower case/);
    assert.throws(() => codec({ metadata: { 'x-namespace': 'x' } }), /use namespace/);
  });

  test('custom metadata is accepted', async () => {
    const subject = codec({ metadata: { authorization: 'Bearer t0ken' } });
    assert.equal((await subject.encode([plain(1)])).length, 1);
  });
});
