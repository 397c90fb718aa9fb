// Inference API keys with a scope (`/api/v1/auth/keys`), made and revoked behind the management
// key. The engine keeps only a hash of each key: the plaintext is in the answer to its creation
// and nowhere else, so the UI shows it once and keeps it in no store.

import { body, json } from './api';
import type { components } from './api/schema';

type Schemas = components['schemas'];

/** A stored key, as the listing shows it (never its secret). */
export type ApiKey = Schemas['ApiKey'];
/** A new key, with its plaintext `key`. */
export type CreatedKey = Schemas['CreatedKey'];
export type CreateKeyRequest = Schemas['CreateKeyRequest'];

export const keysApi = {
  list: () => json<ApiKey[]>('/auth/keys'),
  create: (request: CreateKeyRequest) => json<CreatedKey>('/auth/keys', { method: 'POST', ...body(request) }),
  /** `expires_at` in Unix seconds; now or past expires it at once, `null`: it never expires. */
  setExpiry: (id: number, expires_at: number | null) =>
    json<ApiKey>(`/auth/keys/${encodeURIComponent(String(id))}`, { method: 'PATCH', ...body({ expires_at }) }),
  revoke: (id: number) => json<void>(`/auth/keys/${encodeURIComponent(String(id))}`, { method: 'DELETE' }),
};

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** The expiries the form offers; `date`: one the user picks. */
export const EXPIRY_CHOICES = [
  { value: 'never', label: 'Never' },
  { value: '1', label: 'In 1 day' },
  { value: '7', label: 'In 7 days' },
  { value: '30', label: 'In 30 days' },
  { value: '90', label: 'In 90 days' },
  { value: 'date', label: 'On a date…' },
] as const;

export type ExpiryChoice = (typeof EXPIRY_CHOICES)[number]['value'];

/**
 * The `expires_at` of a choice, in Unix seconds: `null` for never, `undefined` for a date that is
 * missing or not a date. A date (`YYYY-MM-DD`, local time) keeps the key working through that day.
 */
export function expiryOf(choice: ExpiryChoice, date: string, now = Date.now()): number | null | undefined {
  if (choice === 'never') return null;
  if (choice !== 'date') return Math.floor(now / 1000) + Number(choice) * 86_400;
  const parts = /^(\d{4})-(\d{2})-(\d{2})$/.exec(date);
  if (!parts) return undefined;
  const [year, month, day] = parts.slice(1).map(Number);
  const end = new Date(year, month - 1, day + 1, 0, 0, 0);
  return Number.isNaN(end.getTime()) ? undefined : Math.floor(end.getTime() / 1000);
}

/** Whether the key is refused for its age: the engine's word, or its expiry passed since. */
export function isExpired(key: ApiKey, now = nowSeconds()): boolean {
  return key.expired || (key.expires_at != null && key.expires_at <= now);
}

/** A time in Unix seconds as people read it: `Mar 4, 2026, 14:05`. */
export function dateTime(seconds: number): string {
  return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** A time in Unix seconds as a date alone: `Mar 4, 2026`. */
export function dateOnly(seconds: number): string {
  return new Date(seconds * 1000).toLocaleDateString(undefined, { dateStyle: 'medium' });
}

/** How long ago a time was, roughly: `just now`, `5 min ago`, `3 h ago`, `2 days ago`. */
export function ago(seconds: number, now = nowSeconds()): string {
  const s = Math.max(0, now - seconds);
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ago`;
  const days = Math.floor(s / 86_400);
  return days < 30 ? `${days} day${days === 1 ? '' : 's'} ago` : dateOnly(seconds);
}

/** What a key may use, in words. */
export function scopeText(key: ApiKey): string {
  return key.permission_mode === 'allow_all' ? 'All instances' : key.instance_ids.join(', ');
}

/** A first request to try the key with. */
export function usageSnippet(origin: string, key: string): string {
  return `curl ${origin}/v1/models \\\n  -H "Authorization: Bearer ${key}"`;
}
