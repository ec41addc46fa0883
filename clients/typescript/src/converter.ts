/**
 * The data converter a TypeScript worker or client should use: our codec, and failures encrypted too.
 *
 * Temporal's default failure converter leaves a failure's message and stack trace in clear text in
 * the history; only its details go through the codec. Exceptions often quote the data they failed
 * on, so `dataConverter()` makes the safe choice the easy one: its failure converter
 * (`encodeCommonAttributes: true`) moves message and stack trace into an encoded payload as well.
 * The failure converter runs inside the workflow sandbox too, so it is given as a module path
 * (`failureConverterPath`), which the worker's bundler includes.
 */
import * as path from 'node:path';
import type { DataConverter } from '@temporalio/common';
import { RemotePayloadCodec, type RemotePayloadCodecOptions } from './codec';

/** A module whose `failureConverter` export encrypts failure messages and stack traces. */
export const FAILURE_CONVERTER_PATH = path.join(__dirname, 'failure-converter');

export interface DataConverterOptions extends RemotePayloadCodecOptions {
  /** Further codecs, applied before ours on encode (compression, say): ours must come last. */
  innerCodecs?: DataConverter['payloadCodecs'];
  /** Offloading of large payloads (experimental in @temporalio/common 1.24); after the codec. */
  externalStorage?: DataConverter['externalStorage'];
}

/** `{ payloadCodecs: [our codec], failureConverterPath }` for `Client`, `Worker.create` and bundles. */
export function dataConverter(options: DataConverterOptions): DataConverter {
  const { innerCodecs = [], externalStorage, ...codecOptions } = options;
  const converter: DataConverter = {
    payloadCodecs: [...innerCodecs, new RemotePayloadCodec(codecOptions)],
    failureConverterPath: FAILURE_CONVERTER_PATH,
  };
  if (externalStorage !== undefined) converter.externalStorage = externalStorage;
  return converter;
}
