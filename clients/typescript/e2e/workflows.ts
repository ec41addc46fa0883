/** Workflows of the TypeScript end-to-end worker (bundled by the worker, run in its sandbox). */
import { ApplicationFailure } from '@temporalio/workflow';

export interface Secret {
  card: string;
}

/** Echoes a secret, marked by the TypeScript side. */
export async function tsSecretWorkflow(secret: Secret): Promise<{ echo: Secret; by: string }> {
  return { echo: secret, by: 'typescript' };
}

/** Fails with a secret in its message: the failure converter must encrypt it. */
export async function tsDeclinedWorkflow(secret: Secret): Promise<never> {
  throw ApplicationFailure.nonRetryable(`card ${secret.card} declined`, 'PaymentDeclined');
}
