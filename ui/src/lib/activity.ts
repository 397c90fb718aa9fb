// The activity log: the last finished inference requests (`GET /api/v1/activity[/{id}]`), and each
// new one as the engine's event stream announces it (`activity`; instances.svelte.ts follows the
// stream and hands those events here). The engine keeps a request's bodies only for an instance
// with `capture_bodies`, and shows them only in that request's details.

import { json } from './api';
import type { components } from './api/schema';

type Schemas = components['schemas'];

/** One finished request. */
export type ActivityRecord = Schemas['ActivityRecord'];
/** One record with its bodies, where its instance captured them. */
export type ActivityDetail = Schemas['ActivityDetail'];
/** A page of records, newest first. */
export type ActivityPage = Schemas['ActivityPage'];

/** Which records a listing wants: `status` is a class (`2xx`), `error` (400 and above) or a code. */
export interface ActivityFilter {
  instance?: string;
  status?: string;
}

/** The status filters the page offers (the engine takes any code too). */
export const STATUS_FILTERS: { value: string; label: string }[] = [
  { value: '', label: 'All statuses' },
  { value: '2xx', label: '2xx (success)' },
  { value: '4xx', label: '4xx (refused)' },
  { value: '5xx', label: '5xx (failed)' },
  { value: 'error', label: 'Errors (4xx and 5xx)' },
];

/** The query of a listing: only the filters that are set. */
export function activityQuery(filter: ActivityFilter, more: { after?: number; limit?: number } = {}): string {
  const params = new URLSearchParams();
  if (filter.instance) params.set('instance', filter.instance);
  if (filter.status) params.set('status', filter.status);
  if (more.after != null) params.set('after', String(more.after));
  if (more.limit != null) params.set('limit', String(more.limit));
  const query = params.toString();
  return query ? `?${query}` : '';
}

export const activityApi = {
  list: (filter: ActivityFilter, more: { after?: number; limit?: number } = {}) =>
    json<ActivityPage>(`/activity${activityQuery(filter, more)}`),
  get: (id: number) => json<ActivityDetail>(`/activity/${encodeURIComponent(String(id))}`),
};

/** Whether `record` is one that `filter` wants: the engine's own rule, for the live records. */
export function matchesFilter(record: ActivityRecord, filter: ActivityFilter): boolean {
  if (filter.instance && filter.instance !== record.instance) return false;
  const status = filter.status ?? '';
  if (!status) return true;
  if (status === 'error') return record.status >= 400;
  if (/^[1-5]xx$/.test(status)) return Math.floor(record.status / 100) === Number(status[0]);
  return Number(status) === record.status;
}

/** `a` and `b` as one list, newest (largest id) first, each id once, at most `max`. */
export function mergeNewest(a: ActivityRecord[], b: ActivityRecord[], max: number): ActivityRecord[] {
  const byId = new Map<number, ActivityRecord>();
  for (const record of [...b, ...a]) byId.set(record.id, record);
  return [...byId.values()].sort((x, y) => y.id - x.id).slice(0, max);
}

type Listener = (record: ActivityRecord) => void;
const listeners = new Set<Listener>();

/** Calls `listener` with each record the event stream brings, until the returned function is called. */
export function onActivity(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** One `activity` event of the stream. */
export function publishActivity(record: ActivityRecord): void {
  for (const listener of listeners) {
    try {
      listener(record);
    } catch (error) {
      console.warn('an activity listener failed', error);
    }
  }
}

/** Milliseconds as people read them: `840 ms`, `2.35 s`, `1m 05s`. */
export function millis(value: number | null | undefined): string {
  if (value == null || !Number.isFinite(value)) return '–';
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60_000) return `${(value / 1000).toFixed(value < 10_000 ? 2 : 1)} s`;
  const s = Math.round(value / 1000);
  return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
}

/** The tone of a status: a success, a refusal (or a client that left), a failure. */
export function statusTone(status: number): 'ok' | 'warn' | 'bad' {
  if (status < 400) return 'ok';
  return status < 500 ? 'warn' : 'bad';
}

/** What a status means, where the number alone may puzzle. */
export function statusMeaning(status: number): string | null {
  const known: Record<number, string> = {
    400: 'bad request',
    401: 'no valid key',
    403: 'forbidden',
    404: 'not found',
    408: 'timed out',
    413: 'too large',
    429: 'too many requests',
    499: 'the client left before the answer',
    500: 'server error',
    502: 'bad gateway: the backend failed',
    503: 'unavailable',
    504: 'gateway timeout',
  };
  return known[status] ?? null;
}

/** The time of a record: the clock time today, the date too before. */
export function clockTime(atMs: number, now = Date.now()): string {
  const at = new Date(atMs);
  const time = at.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  if (at.toDateString() === new Date(now).toDateString()) return time;
  return `${at.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })} ${time}`;
}
