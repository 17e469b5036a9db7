/**
 * Errors of the HTTP API, in OpenAI's shape:
 *
 *   {"error": {"message": "<one sentence>", "type": "invalid_request_error", "param": "temperature", "code": null}}
 *
 * A TesseraError (the user's mistake) keeps its sentence and maps to a 4xx status; anything else
 * is a bug, logged with its stack and answered 500 with a generic sentence.
 */
import { isTesseraError } from '../errors.js';

export type ApiErrorType = 'invalid_request_error' | 'authentication_error' | 'rate_limit_error' | 'server_error';

export interface ApiErrorBody {
  error: { message: string; type: ApiErrorType; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: 400 | 401 | 404 | 413 | 429 | 500 | 503,
    message: string,
    readonly param: string | null = null,
    readonly type: ApiErrorType = 'invalid_request_error',
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  body(): ApiErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** A 400 naming the field. */
export function badField(param: string, message: string): ApiError {
  return new ApiError(400, message, param);
}

/** The status and type of a TesseraError thrown while taking a request (param: the field it concerns). */
export function fromTesseraError(err: unknown, param: string | null = null): ApiError | null {
  if (!isTesseraError(err)) return null;
  switch (err.code) {
    case 'invalid_input':
    case 'limit':
    case 'unsupported':
      return new ApiError(400, err.message, param);
    case 'aborted':
      return new ApiError(503, err.message, null, 'server_error');
    default:
      return null; // a checkpoint or device failure mid-serving is the server's fault: 500
  }
}

export const INTERNAL_ERROR = new ApiError(500, 'The server hit an internal error (a bug in Tessera; its log has the details).', null, 'server_error');
