// The instances the UI shows, kept current by the engine's event stream (`/api/v1/events`):
// a snapshot on every (re)connection, then one event per change. Engines without the stream get
// a gentle poll instead. The same stream carries model downloads (`download`), kept in
// downloads.svelte.ts, backend installs (`backend_install`), kept in installs.svelte.ts, and the
// finished inference requests (`activity`), handed to the Activity page's listeners (activity.ts).

import { publishActivity, type ActivityRecord } from './activity';
import { api, API } from './api';
import { upsertJob } from './downloads.svelte';
import { upsertInstall } from './installs.svelte';
import type { DownloadJob, InstallJob } from './models';
import { followStream, type StreamState } from './sse';
import { toast } from './toasts.svelte';
import type { ConfigReload, Instance } from './types';

export const instances = $state({
  byName: {} as Record<string, Instance>,
  /** True once the first snapshot (or list) arrived. */
  loaded: false,
  connection: 'connecting' as StreamState | 'polling',
});

export function sortedInstances(): Instance[] {
  return Object.values(instances.byName).sort((a, b) => a.name.localeCompare(b.name));
}

export function upsert(instance: Instance): void {
  instances.byName[instance.name] = instance;
}

export function forget(name: string): void {
  delete instances.byName[name];
}

function replaceAll(list: Instance[]): void {
  const next: Record<string, Instance> = {};
  for (const instance of list) next[instance.name] = instance;
  instances.byName = next;
  instances.loaded = true;
}

/** A reload of the engine's configuration (SIGHUP or an edit of its file), or its refusal. */
function announceReload(report: ConfigReload): void {
  if (!report.applied) {
    toast(`The new configuration was refused; the running one stays: ${report.error ?? 'unknown error'}`, 'error');
    return;
  }
  const parts = [`Configuration reloaded (${report.changed.length} setting${report.changed.length === 1 ? '' : 's'} changed)`];
  if (report.restarting.length > 0) parts.push(`restarting ${report.restarting.join(', ')} once idle`);
  if (report.needs_restart.length > 0) parts.push(`${report.needs_restart.join(', ')} take effect when Corral restarts`);
  toast(parts.join('; '), report.needs_restart.length > 0 ? 'warning' : 'info');
}

/** Applies one event of the stream; returns false for events it does not know. */
export function applyEvent(event: string, data: string): boolean {
  switch (event) {
    case 'snapshot':
      replaceAll(JSON.parse(data) as Instance[]);
      return true;
    case 'instance': {
      const next = JSON.parse(data) as Instance;
      const before = instances.byName[next.name];
      // A crash past its restarts is news wherever the user is looking.
      if (before && before.status !== 'failed' && next.status === 'failed') {
        toast(`${next.name} failed${next.error ? `: ${next.error}` : ''}`, 'error');
      }
      upsert(next);
      return true;
    }
    case 'deleted':
      forget((JSON.parse(data) as { name: string }).name);
      return true;
    case 'download':
      upsertJob(JSON.parse(data) as DownloadJob);
      return true;
    case 'backend_install':
      upsertInstall(JSON.parse(data) as InstallJob);
      return true;
    case 'activity':
      publishActivity(JSON.parse(data) as ActivityRecord);
      return true;
    case 'config':
      announceReload(JSON.parse(data) as ConfigReload);
      return true;
    default:
      return false;
  }
}

const POLL_MS = 2000;

/** Follows the engine until the returned function is called. */
export function followInstances(): () => void {
  let pollTimer: ReturnType<typeof setInterval> | undefined;
  const poll = async () => {
    try {
      replaceAll(await api.list());
    } catch {
      // The next tick tries again; a 401 has already brought up the login.
    }
  };
  const stream = followStream(`${API}/events`, {
    onEvent: (event) => {
      try {
        applyEvent(event.event, event.data);
      } catch (error) {
        console.warn('ignored a malformed event', event, error);
      }
    },
    onState: (state) => {
      instances.connection = state;
      if (state === 'unsupported' && pollTimer === undefined) {
        instances.connection = 'polling';
        void poll();
        pollTimer = setInterval(poll, POLL_MS);
      }
    },
  });
  return () => {
    stream.close();
    clearInterval(pollTimer);
  };
}
