// Instance actions shared by the cards, the logs page and the keyboard: each updates the store
// with the engine's answer at once (the event stream confirms it a moment later).

import { api, ApiError } from './api';
import { auth } from './auth.svelte';
import { forget, upsert } from './instances.svelte';
import { toast } from './toasts.svelte';
import type { Instance } from './types';

export type Action = 'start' | 'stop' | 'restart' | 'delete';

function showWarnings(instance: Instance | undefined): void {
  for (const warning of instance?.warnings ?? []) toast(warning, 'warning', 12000);
}

export async function act(action: Action, name: string): Promise<boolean> {
  try {
    if (action === 'delete') {
      await api.remove(name);
      forget(name);
      toast(`Deleted ${name}.`);
    } else {
      const instance = await api[action](name);
      upsert(instance);
      showWarnings(instance);
    }
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return false;
    const message = error instanceof Error ? error.message : String(error);
    toast(`Could not ${action} ${name}: ${message}`, 'error');
    return false;
  }
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

/**
 * The backend's own web page (llama.cpp's chat UI). Seen from this machine, the backend's port is
 * opened directly: the page then talks to its server with no key in the way. From elsewhere it
 * goes through the engine's proxy; a new tab cannot send the Authorization header, so the key
 * rides along as `?api_key=`, which the engine accepts.
 */
export function webPageUrl(instance: Instance): string {
  const port = Number(instance.options.backend_options?.port);
  const host = String(instance.options.backend_options?.host ?? '127.0.0.1');
  const backendLocal = LOOPBACK.has(host) || host === '0.0.0.0' || host === '::';
  if (LOOPBACK.has(location.hostname) && backendLocal && port > 0) {
    return `${location.protocol}//${location.hostname}:${port}/`;
  }
  const base = api.proxyPath(instance.name);
  return auth.key ? `${base}?api_key=${encodeURIComponent(auth.key)}` : base;
}

export function openWebPage(instance: Instance): void {
  window.open(webPageUrl(instance), '_blank', 'noopener');
}
