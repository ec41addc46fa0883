/**
 * `failureConverterPath` of `dataConverter()`: failure messages and stack traces encoded (encrypted by
 * our codec) instead of left in clear text in the history. Loaded by path, in the workflow sandbox too.
 */
import { DefaultFailureConverter } from '@temporalio/common';

export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
