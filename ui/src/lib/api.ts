// Every call to the management API: the key, JSON in and out, and errors turned into ApiError
// (a 401 also brings up the login).

import { auth, authHeaders, requireLogin } from './auth.svelte';
import type { DesktopFolder, DesktopSettings, Instance, Schema, SystemReport } from './types';

export const API = '/api/v1';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** The option the error is about (`name`, `idle_timeout`, `backend_options.ctx_size`). */
    readonly field?: string,
  ) {
    super(message);
  }
}

export function unauthorizedMessage(): string {
  return auth.key
    ? 'The engine refused this key. Enter a current management key.'
    : 'This engine needs its management key.';
}

/** Turns a failed response into an ApiError, reading the engine's `{error, details, field}`. */
export async function errorOf(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => '');
  let code = `http_${response.status}`;
  let message = text.trim() || response.statusText || `HTTP ${response.status}`;
  let field: string | undefined;
  try {
    const body = JSON.parse(text);
    if (typeof body?.error === 'string') {
      code = body.error;
      message = typeof body.details === 'string' ? body.details : code;
      if (typeof body.field === 'string') field = body.field;
    } else if (body?.error && typeof body.error.message === 'string') {
      // The auth layer answers in llamactl's (OpenAI's) shape.
      code = body.error.type ?? code;
      message = body.error.message;
    }
  } catch {
    // Not JSON: keep the text.
  }
  return new ApiError(response.status, code, message, field);
}

export async function request(path: string, init: RequestInit = {}): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(API + path, {
      ...init,
      headers: { ...authHeaders(), ...(init.headers as Record<string, string> | undefined) },
    });
  } catch {
    throw new ApiError(0, 'network', 'Cannot reach the Corral engine. Is `corral serve` running?');
  }
  if (response.status === 401) {
    const error = await errorOf(response);
    requireLogin(unauthorizedMessage());
    throw error;
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** A request whose answer is JSON (nothing for a 204). */
export async function json<T>(path: string, init: RequestInit = {}): Promise<T> {
  const response = await request(path, init);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

async function text(path: string): Promise<string> {
  return (await request(path)).text();
}

/** `value` as a JSON request body, declared as such. */
export function body(value: unknown): RequestInit {
  return { body: JSON.stringify(value), headers: { 'Content-Type': 'application/json' } };
}

const instancePath = (name: string) => `/instances/${encodeURIComponent(name)}`;

/** The URL segment parse-command takes for each backend type. */
export function parseSegment(backend: string): string {
  return { llama_cpp: 'llama-cpp', mlx_lm: 'mlx', vllm: 'vllm' }[backend] ?? backend;
}

export const api = {
  list: () => json<Instance[]>('/instances'),
  get: (name: string) => json<Instance>(instancePath(name)),
  create: (name: string, options: unknown) =>
    json<Instance>(instancePath(name), { method: 'POST', ...body(options) }),
  update: (name: string, options: unknown) =>
    json<Instance>(instancePath(name), { method: 'PUT', ...body(options) }),
  remove: (name: string) => json<void>(instancePath(name), { method: 'DELETE' }),
  start: (name: string) => json<Instance>(`${instancePath(name)}/start`, { method: 'POST' }),
  stop: (name: string) => json<Instance>(`${instancePath(name)}/stop`, { method: 'POST' }),
  restart: (name: string) => json<Instance>(`${instancePath(name)}/restart`, { method: 'POST' }),
  logs: (name: string, lines: number) => text(`${instancePath(name)}/logs?lines=${lines}`),
  schema: () => json<Schema>('/schema'),
  parseCommand: (backend: string, command: string) =>
    json<{ backend_type: string; backend_options: Record<string, unknown> }>(
      `/backends/${parseSegment(backend)}/parse-command`,
      { method: 'POST', ...body({ command }) },
    ),
  system: () => json<SystemReport>('/system'),
  version: () => text('/version'),
  serverVersion: () => text('/server/version'),
  serverDevices: () => text('/server/devices'),
  desktopSettings: () => json<DesktopSettings>('/desktop/settings'),
  updateDesktopSettings: (change: Partial<DesktopSettings>) =>
    json<DesktopSettings>('/desktop/settings', { method: 'PUT', ...body(change) }),
  openFolder: (folder: DesktopFolder) => json<void>('/desktop/open', { method: 'POST', ...body({ folder }) }),
  logsStreamPath: (name: string, lines: number) =>
    `${API}${instancePath(name)}/logs/stream?lines=${lines}`,
  /** A one-time address of the instance's own web page (see `openWebPage`). */
  proxyTicket: (name: string) =>
    json<{ url: string; expires_in: number }>(`${instancePath(name)}/proxy-token`, { method: 'POST' }),
};
