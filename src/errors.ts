/**
 * An error the user caused and can fix: a bad file, request field or limit. Its message is one
 * sentence that names the file, field or limit and what to do. The CLI prints only the message
 * and exits non-zero; the server answers it as an OpenAI-style error. Anything that is not a
 * TesseraError is a bug in Tessera and is reported with its stack.
 */
export class TesseraError extends Error {
  /** Machine-readable category; the server maps it to an HTTP status. */
  readonly code: TesseraErrorCode;

  constructor(message: string, code: TesseraErrorCode = 'invalid_input', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TesseraError';
    this.code = code;
  }
}

export type TesseraErrorCode =
  | 'invalid_input' // a file or argument is wrong
  | 'invalid_checkpoint' // a model directory, config or weight file is wrong
  | 'unsupported' // valid, but Tessera does not support it (architecture, dtype, option)
  | 'limit' // a size limit was exceeded (context length, KV pool, queue)
  | 'device' // the GPU or driver refused
  | 'aborted'; // the caller cancelled

export function isTesseraError(err: unknown): err is TesseraError {
  return err instanceof TesseraError;
}
