import { afterEach, describe, expect, it, vi } from 'vitest';
import { clock, startClock } from './clock.svelte';

describe('clock', () => {
  afterEach(() => vi.useRealTimers());

  it('shows the current time from the moment it starts, not the time the page loaded', () => {
    vi.useFakeTimers();
    // The module was loaded a while ago (a slow first load, a window opened long after).
    vi.setSystemTime(Date.now() + 30_000);
    const stop = startClock();
    expect(clock.now).toBeCloseTo(Date.now() / 1000, 0);
    vi.advanceTimersByTime(5_000);
    expect(clock.now).toBeCloseTo(Date.now() / 1000, 0);
    stop();
  });
});
