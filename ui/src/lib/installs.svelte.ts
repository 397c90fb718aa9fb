// Backend installs as they progress: the latest job of each backend (`GET
// /api/v1/backends/{backend}/install`), then each `backend_install` event of the engine's stream
// (see instances.svelte.ts, which follows it) replaces it.

import type { InstallJob, ModelBackend } from './models';

export const installs = $state({
  byBackend: {} as Partial<Record<ModelBackend, InstallJob>>,
  /** Bumped when an install completes: `/backends` has changed. */
  completed: 0,
});

export function upsertInstall(job: InstallJob): void {
  const before = installs.byBackend[job.backend];
  if (job.state === 'completed' && !(before?.id === job.id && before.state === 'completed')) installs.completed++;
  installs.byBackend[job.backend] = job;
}
