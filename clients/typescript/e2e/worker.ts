/**
 * A real TypeScript worker with our codec (dataConverter()), for tests/system/test_temporal_e2e.py.
 * Environment: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TASK_QUEUE, CODEC_SERVER_TARGET, CODEC_PROTO_PATH (the
 * repository's codec.proto: this build carries no packed copy). Prints READY
 * once polling; stops on SIGTERM.
 */
import { NativeConnection, Worker } from '@temporalio/worker';
import { dataConverter } from '../src/index';

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

async function main(): Promise<void> {
  const namespace = required('TEMPORAL_NAMESPACE');
  const connection = await NativeConnection.connect({ address: required('TEMPORAL_ADDRESS') });
  const worker = await Worker.create({
    connection,
    namespace,
    taskQueue: required('TASK_QUEUE'),
    workflowsPath: require.resolve('./workflows'),
    dataConverter: dataConverter({
      target: required('CODEC_SERVER_TARGET'),
      namespace,
      protoPath: required('CODEC_PROTO_PATH'),
    }),
  });
  await worker.runUntil(async () => {
    console.log('READY');
    await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  });
  await connection.close();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
