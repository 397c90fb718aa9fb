// Instance actions shared by the cards, the logs page and the keyboard: each updates the store
// with the engine's answer at once (the event stream confirms it a moment later).

import { api, ApiError } from './api';
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
 * The backend's own web page (llama.cpp's chat), through the engine's proxy: the backend answers
 * only the engine, which adds the key it holds for it. A new tab cannot send the management key,
 * and must not get it (any script in the backend's page could read it), so the engine gives a
 * one-time ticket for this instance's page, which the tab swaps for a cookie that opens only this
 * instance's proxy path.
 */
export async function openWebPage(instance: Instance): Promise<void> {
  try {
    const { url } = await api.proxyTicket(instance.name);
    window.open(url, '_blank', 'noopener');
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    const message = error instanceof Error ? error.message : String(error);
    toast(`Could not open the page of ${instance.name}: ${message}`, 'error');
  }
}
