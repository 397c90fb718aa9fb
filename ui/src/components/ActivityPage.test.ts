import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import ActivityPage from './ActivityPage.svelte';
import App from '../App.svelte';
import type { ActivityRecord } from '../lib/activity';
import { applyEvent, instances } from '../lib/instances.svelte';
import { listen, parseRoute, router } from '../lib/router.svelte';
import { fakeEngine, json, liveSse, type Seen } from '../test/engine';
import { schemaFixture } from '../test/schema.fixture';

const record = (id: number, change: Partial<ActivityRecord> = {}): ActivityRecord => ({
  id,
  at_ms: Date.now() - (100 - id) * 1000,
  instance: 'tiny',
  path: '/v1/chat/completions',
  client: '127.0.0.1:50123',
  key: null,
  status: 200,
  queued_ms: 3,
  first_byte_ms: 180,
  duration_ms: 1450,
  prompt_tokens: 12,
  completion_tokens: 34,
  tokens_per_second: 27.25,
  error: null,
  captured: false,
  ...change,
});

const page = (entries: ActivityRecord[]) => ({ entries, capacity: 1000, next_id: (entries[0]?.id ?? 0) + 1 });

/** The engine's event stream delivering one `activity` event. */
const event = (r: ActivityRecord) => applyEvent('activity', JSON.stringify(r));

const rows = () => screen.queryAllByTestId('activity-row');
const ids = () => rows().map((row) => Number(row.dataset.id));
const listings = (seen: Seen[]) => seen.filter((r) => r.path.startsWith('/api/v1/activity?'));

let stopRouter: () => void;

function at(hash: string) {
  location.hash = hash;
  router.route = parseRoute(hash);
}

describe('ActivityPage', () => {
  beforeEach(() => {
    instances.byName = {};
    instances.loaded = true;
    at('#/activity');
    stopRouter = listen();
  });
  afterEach(() => {
    stopRouter();
    at('#/');
    vi.unstubAllGlobals();
  });

  it('lists the recent requests with their figures, newest first', async () => {
    const { seen } = fakeEngine({
      'GET /api/v1/activity': () =>
        json(page([record(2, { instance: 'big', path: '/v1/completions', prompt_tokens: 5, completion_tokens: null, tokens_per_second: null }), record(1)])),
    });
    render(ActivityPage);
    await waitFor(() => expect(ids()).toEqual([2, 1]));
    expect(listings(seen).map((r) => r.path)).toEqual(['/api/v1/activity?limit=500']);

    const newest = within(rows()[0]);
    expect(newest.getByTestId('activity-instance').textContent).toBe('big');
    expect(newest.getByTestId('activity-route').textContent).toBe('/v1/completions');
    expect(rows()[0].textContent).toContain('5 / –');

    const older = rows()[1];
    expect(within(older).getByTestId('activity-status').textContent).toBe('200');
    for (const figure of ['127.0.0.1:50123', '3 ms', '180 ms', '1.45 s', '12 / 34', '27.3']) {
      expect(older.textContent).toContain(figure);
    }
    expect(screen.getAllByRole('columnheader').map((h) => h.textContent)).toEqual([
      'Time', 'Instance', 'Route', 'Client', 'Status', 'Queue', 'TTFT', 'Duration', 'Tokens', 'tok/s',
    ]);
    expect(screen.getByTestId('activity-live').textContent).toContain('2 requests');
  });

  it('puts each finished request on top as the event stream announces it', async () => {
    fakeEngine({ 'GET /api/v1/activity': () => json(page([record(2), record(1)])) });
    render(ActivityPage);
    await waitFor(() => expect(ids()).toEqual([2, 1]));

    event(record(3, { instance: 'other', status: 201 }));
    await waitFor(() => expect(ids()).toEqual([3, 2, 1]));
    expect(within(rows()[0]).getByTestId('activity-instance').textContent).toBe('other');
    // A record the page already has (the list and the stream overlap) is not shown twice.
    event(record(3, { instance: 'other', status: 201 }));
    await Promise.resolve();
    expect(ids()).toEqual([3, 2, 1]);
    // The instance it came from can now be chosen in the filter.
    const options = [...screen.getByTestId<HTMLSelectElement>('activity-filter-instance').options].map((o) => o.value);
    expect(options).toEqual(['', 'other', 'tiny']);
  });

  it('asks the engine for the status class chosen, and hides live requests that do not match', async () => {
    const { seen } = fakeEngine({
      'GET /api/v1/activity': (req) =>
        json(page(req.path.includes('status=5xx') ? [record(4, { status: 503, error: 'no room' })] : [record(5), record(4, { status: 503 }), record(3)])),
    });
    render(ActivityPage);
    await waitFor(() => expect(ids()).toEqual([5, 4, 3]));

    await fireEvent.change(screen.getByTestId('activity-filter-status'), { target: { value: '5xx' } });
    await waitFor(() => expect(ids()).toEqual([4]));
    expect(listings(seen).at(-1)?.path).toBe('/api/v1/activity?status=5xx&limit=500');
    // The filter is in the address, so the filtered view can be reloaded or shared.
    expect(location.hash).toBe('#/activity?status=5xx');
    expect(screen.getByTestId<HTMLSelectElement>('activity-filter-status').value).toBe('5xx');

    event(record(6, { status: 200 }));
    event(record(7, { status: 502, error: 'backend gone' }));
    event(record(8, { status: 429 }));
    await waitFor(() => expect(ids()).toEqual([7, 4]));
    expect(rows().map((r) => within(r).getByTestId('activity-status').textContent)).toEqual(['502', '503']);

    // Filtering by instance too sends both; a live request of another instance stays out.
    event(record(9, { status: 500, instance: 'big' }));
    await waitFor(() => expect(ids()).toEqual([9, 7, 4]));
    await fireEvent.change(screen.getByTestId('activity-filter-instance'), { target: { value: 'tiny' } });
    await waitFor(() => expect(listings(seen).at(-1)?.path).toBe('/api/v1/activity?instance=tiny&status=5xx&limit=500'));
    expect(location.hash).toBe('#/activity?instance=tiny&status=5xx');
    event(record(10, { status: 500, instance: 'big' }));
    event(record(11, { status: 500, instance: 'tiny' }));
    await waitFor(() => expect(ids()).toEqual([11, 4]));

    await fireEvent.click(screen.getByRole('button', { name: 'Clear filters' }));
    await waitFor(() => expect(listings(seen).at(-1)?.path).toBe('/api/v1/activity?limit=500'));
    await waitFor(() => expect(ids()).toEqual([5, 4, 3]));
  });

  it('opens a request\'s details from its row, read from the engine, with the error text', async () => {
    const failed = record(7, { status: 502, error: 'the backend closed the connection', first_byte_ms: null, key: 'ci' });
    const { seen } = fakeEngine({
      'GET /api/v1/activity': () => json(page([record(8), { ...failed, error: null }])),
      'GET /api/v1/activity/7': () => json(failed),
    });
    render(ActivityPage);
    await waitFor(() => expect(ids()).toEqual([8, 7]));

    await fireEvent.click(within(rows()[1]).getByTestId('activity-route'));
    const detail = await screen.findByTestId('activity-detail');
    expect(location.hash).toBe('#/activity/7');
    expect(screen.getByRole('dialog', { name: 'Request #7' })).toBeTruthy();
    // The engine's copy is what the panel shows (the table's had no error text).
    await waitFor(() => expect(within(detail).getByTestId('activity-detail-error').textContent).toBe('the backend closed the connection'));
    expect(seen.some((r) => r.path === '/api/v1/activity/7')).toBe(true);
    expect(within(detail).getByTestId('activity-detail-route').textContent).toBe('/v1/chat/completions');
    expect(within(detail).getByTestId('activity-detail-status').textContent).toContain('502');
    expect(within(detail).getByTestId('activity-detail-status').textContent).toContain('bad gateway');
    expect(detail.textContent).toContain('127.0.0.1:50123');
    expect(detail.textContent).toContain('none sent');
    expect(detail.textContent).toMatch(/API key\s*ci/);
    // The key's name shows in the table too.
    expect(rows()[1].textContent).toContain('127.0.0.1:50123 · ci');
    expect(detail.textContent).not.toMatch(/body/i);

    await fireEvent.click(screen.getByRole('button', { name: 'Close' }));
    await waitFor(() => expect(screen.queryByTestId('activity-detail')).toBeNull());
    expect(location.hash).toBe('#/activity');
  });

  it('shows the bodies of a request whose instance captures them', async () => {
    at('#/activity/4');
    fakeEngine({
      'GET /api/v1/activity': () => json(page([record(4, { captured: true })])),
      'GET /api/v1/activity/4': () =>
        json({ ...record(4, { captured: true }), bodies: { request: '{"model":"tiny","prompt":"hi"}', answer: '{"choices":[]}' } }),
    });
    render(ActivityPage);
    expect((await screen.findByTestId('activity-detail-request-body')).textContent).toBe('{"model":"tiny","prompt":"hi"}');
    expect(screen.getByTestId('activity-detail-answer-body').textContent).toBe('{"choices":[]}');
  });

  it('opens the details a link names, also of a request the table does not show', async () => {
    at('#/activity/3?status=error');
    fakeEngine({
      'GET /api/v1/activity': () => json(page([])),
      'GET /api/v1/activity/3': () => json(record(3, { status: 400, error: 'prompt too long' })),
      'GET /api/v1/activity/99': () => json({ error: 'not_found', details: 'no request 99 in the activity log' }, 404),
    });
    render(ActivityPage);
    expect((await screen.findByTestId('activity-detail-error')).textContent).toBe('prompt too long');
    expect(screen.getByTestId<HTMLSelectElement>('activity-filter-status').value).toBe('error');

    at('#/activity/99');
    await waitFor(() => expect(screen.getByTestId('activity-detail').textContent).toMatch(/Request #99 is not in the activity log/));
    expect(screen.getByRole('dialog', { name: 'Request #99' })).toBeTruthy();
  });

  it('says when there is nothing yet, and when the engine cannot be read', async () => {
    let fail = false;
    fakeEngine({
      'GET /api/v1/activity': () =>
        fail ? json({ error: 'internal', details: 'the log is poisoned' }, 500) : json(page([])),
    });
    render(ActivityPage);
    expect((await screen.findByTestId('activity-empty')).textContent).toContain('No requests yet');

    fail = true;
    await fireEvent.click(screen.getByRole('button', { name: 'Refresh' }));
    expect((await screen.findByTestId('activity-error')).textContent).toContain('the log is poisoned');
    expect(screen.getByRole('alert')).toBeTruthy();

    fail = false;
    await fireEvent.click(screen.getByRole('button', { name: 'Try again' }));
    await waitFor(() => expect(screen.queryByTestId('activity-error')).toBeNull());
    expect(screen.getByTestId('activity-empty')).toBeTruthy();
  });
});

describe('ActivityPage, in the app', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    location.hash = '#/';
  });

  it('is a page of the navigation, fed by the engine\'s event stream', async () => {
    const events = liveSse();
    fakeEngine({
      'GET /api/v1/events': () => events.response,
      'GET /api/v1/schema': () => json(schemaFixture),
      'GET /api/v1/activity': () => json(page([record(1)])),
    });
    render(App);
    await fireEvent.click(screen.getByTestId('nav-activity'));
    await waitFor(() => expect(screen.getByRole('heading', { level: 1 }).textContent).toBe('Activity'));
    expect(location.hash).toBe('#/activity');
    await waitFor(() => expect(ids()).toEqual([1]));
    events.push(`event: activity\ndata: ${JSON.stringify(record(2, { instance: 'streamed' }))}\n\n`);
    await waitFor(() => expect(ids()).toEqual([2, 1]));
    expect(within(rows()[0]).getByTestId('activity-instance').textContent).toBe('streamed');
  });
});
