// Model downloads as they progress: the list from `GET /api/v1/models/jobs`, then each `download`
// event of the engine's stream (see instances.svelte.ts, which follows it) replaces its job.

import type { DownloadJob } from './models';

export const downloads = $state({
  byId: {} as Record<string, DownloadJob>,
  /** Bumped when a download completes: the library has a new model to list. */
  completed: 0,
});

export function upsertJob(job: DownloadJob): void {
  const before = downloads.byId[job.id];
  if (job.state === 'completed' && before?.state !== 'completed') downloads.completed++;
  downloads.byId[job.id] = job;
}

export function replaceJobs(list: DownloadJob[]): void {
  const next: Record<string, DownloadJob> = {};
  for (const job of list) next[job.id] = job;
  downloads.byId = next;
}

/** The newest first (RFC 3339 times of one engine sort as text). */
export function sortedJobs(): DownloadJob[] {
  return Object.values(downloads.byId).sort((a, b) => b.created_at.localeCompare(a.created_at));
}
