import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import LogsPage from './LogsPage.svelte';
import LogView from './LogView.svelte';
import { fakeEngine, liveSse } from '../test/engine';

const lines = (...texts: string[]) => texts.map((t) => `event: line\ndata: ${t}\n\n`).join('');
const rows = () => [...document.querySelectorAll('[data-testid="log-view"] .row')].map((r) => r.textContent);

describe('LogsPage', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('follows the live tail and filters it as the user types', async () => {
    const stream = liveSse();
    const { seen } = fakeEngine({ 'GET /api/v1/instances/tiny/logs/stream': () => stream.response });
    render(LogsPage, { name: 'tiny' });
    stream.push(lines('loading model', 'ERROR: out of memory', 'listening on 8080', 'slot 0 error', 'ready'));
    await waitFor(() => expect(rows()).toHaveLength(5));
    expect(seen[0].path).toBe('/api/v1/instances/tiny/logs/stream?lines=1000');

    await fireEvent.input(screen.getByLabelText('Filter log lines'), { target: { value: 'error' } });
    await waitFor(() => expect(rows()).toEqual(['ERROR: out of memory', 'slot 0 error']));
    expect(screen.getByText('2 of 5')).toBeTruthy();
    expect(document.querySelectorAll('[data-testid="log-view"] mark')).toHaveLength(2);

    // New lines are filtered as they arrive.
    stream.push(lines('request done', 'another error'));
    await waitFor(() => expect(rows()).toEqual(['ERROR: out of memory', 'slot 0 error', 'another error']));

    await fireEvent.input(screen.getByLabelText('Filter log lines'), { target: { value: '' } });
    await waitFor(() => expect(rows()).toHaveLength(7));
  });

  it('holds new lines while paused and shows them on resume', async () => {
    const stream = liveSse();
    fakeEngine({ 'GET /api/v1/instances/tiny/logs/stream': () => stream.response });
    render(LogsPage, { name: 'tiny' });
    stream.push(lines('one'));
    await waitFor(() => expect(rows()).toEqual(['one']));

    await fireEvent.click(screen.getByRole('button', { name: 'Pause' }));
    stream.push(lines('two', 'three'));
    const resume = await screen.findByRole('button', { name: 'Resume (2 new)' });
    expect(rows()).toEqual(['one']);

    await fireEvent.click(resume);
    await waitFor(() => expect(rows()).toEqual(['one', 'two', 'three']));
  });
});

describe('LogView', () => {
  it('puts only a window of 100k lines in the page', () => {
    const many = Array.from({ length: 100_000 }, (_, i) => `line ${i}`);
    render(LogView, { lines: many, version: 1, follow: false });
    const shown = document.querySelectorAll('[data-testid="log-view"] .row');
    expect(shown.length).toBeGreaterThan(0);
    expect(shown.length).toBeLessThan(200);
    const spacer = document.querySelector<HTMLElement>('[data-testid="log-view"] .spacer');
    expect(spacer?.style.height).toBe(`${100_000 * 19}px`);
  });
});
