/** dataConverter(): our codec last, and a failure converter that encrypts messages and stack traces. */
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import { DefaultFailureConverter } from '@temporalio/common';
import { dataConverter, FAILURE_CONVERTER_PATH, RemotePayloadCodec } from '../src/index';

// From build/test/ to the repository's protos/: the tests need no packed copy.
const protoPath = path.resolve(__dirname, '..', '..', '..', '..', 'protos', 'codec_grpc', 'v1', 'codec.proto');

test('dataConverter gives our codec and the encrypting failure converter', () => {
  const inner = { encode: async (p: never[]) => p, decode: async (p: never[]) => p };
  const converter = dataConverter({ target: '127.0.0.1:1', namespace: 'orders', protoPath, innerCodecs: [inner] });

  assert.equal(converter.payloadCodecs?.length, 2);
  assert.equal(converter.payloadCodecs?.[0], inner);
  const codec = converter.payloadCodecs?.[1];
  assert.ok(codec instanceof RemotePayloadCodec);
  assert.equal(codec.namespace, 'orders');
  assert.equal(converter.failureConverterPath, FAILURE_CONVERTER_PATH);
  assert.equal(converter.externalStorage, undefined);
  codec.close();

  const loaded = require(FAILURE_CONVERTER_PATH) as { failureConverter: DefaultFailureConverter };
  assert.ok(loaded.failureConverter instanceof DefaultFailureConverter);
  assert.equal(loaded.failureConverter.options.encodeCommonAttributes, true);
});

test('dataConverter refuses what the codec refuses', () => {
  assert.throws(() => dataConverter({ target: '127.0.0.1:1', namespace: 'no spaces', protoPath }), /Temporal namespace name/);
});
