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

/**
 * The backend's own web page (llama.cpp's chat UI) through the engine's proxy. A new tab cannot
 * send the Authorization header, so the key rides along as `?api_key=`, which the engine accepts.
 */
export function webPageUrl(name: string): string {
  const base = api.proxyPath(name);
  return auth.key ? `${base}?api_key=${encodeURIComponent(auth.key)}` : base;
}

export function openWebPage(name: string): void {
  window.open(webPageUrl(name), '_blank', 'noopener');
}
