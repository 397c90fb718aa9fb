import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import App from './App.svelte';
import { setKey } from './lib/auth.svelte';
import { fakeEngine, json, liveSse, type Seen } from './test/engine';
import { schemaFixture } from './test/schema.fixture';

const GOOD = 'the-management-key';
const unauthorized = () => new Response('{"error": {"message": "Missing API key", "type": "authentication_error"}}', { status: 401 });
const authorized = (req: Seen) => req.headers.authorization === `Bearer ${GOOD}`;

const instance = {
  name: 'tiny',
  status: 'running',
  created: 1,
  options: { auto_restart: true, max_restarts: 3, restart_delay: 5, on_demand_start: true, idle_timeout: 0, backend_type: 'llama_cpp', backend_options: { model: '/m/tiny.gguf', port: 8001 } },
  health: 'ready',
  restarts: 0,
  pid: 7,
  started_at: Math.floor(Date.now() / 1000) - 65,
  requests: 3,
  in_flight: 0,
  last_request_at: null,
  tokens_prompt: 10,
  tokens_completion: 20,
  tokens_per_second: 42.5,
};

describe('App', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    setKey('');
    sessionStorage.clear();
  });

  it('asks for the key on 401, then shows the live dashboard', async () => {
    const events = liveSse();
    fakeEngine({
      'GET /api/v1/events': (req) => (authorized(req) ? events.response : unauthorized()),
      'GET /api/v1/schema': (req) => (authorized(req) ? json(schemaFixture) : unauthorized()),
      'GET /api/v1/instances': (req) => (authorized(req) ? json([]) : unauthorized()),
    });
    render(App);

    const key = await screen.findByTestId('login-key');
    expect(screen.getByText('This engine needs its management key.')).toBeTruthy();

    await fireEvent.input(key, { target: { value: 'wrong' } });
    await fireEvent.click(screen.getByTestId('login-submit'));
    expect(await screen.findByText(/That key was refused/)).toBeTruthy();

    await fireEvent.input(key, { target: { value: GOOD } });
    await fireEvent.click(screen.getByTestId('login-submit'));
    await waitFor(() => expect(screen.queryByTestId('login-key')).toBeNull());
    expect(sessionStorage.getItem('corral.key')).toBe(GOOD);

    events.push(`event: snapshot\ndata: ${JSON.stringify([instance])}\n\n`);
    const status = await screen.findByTestId('instance-status-tiny');
    expect(status.textContent).toBe('running');
    const card = screen.getByTestId('instance-card-tiny');
    expect(card.textContent).toContain('tiny.gguf');
    expect(card.textContent).toContain(':8001');
    expect(card.textContent).toContain('42.5');
    expect(card.textContent).toMatch(/1m \d+s/);

    // A change pushed by the engine shows without a reload; a deletion removes the card.
    events.push(`event: instance\ndata: ${JSON.stringify({ ...instance, status: 'stopped', health: null, started_at: null })}\n\n`);
    await waitFor(() => expect(screen.getByTestId('instance-status-tiny').textContent).toBe('stopped'));
    expect(screen.getByTestId('start-tiny')).toBeTruthy();
    events.push('event: deleted\ndata: {"name": "tiny"}\n\n');
    await waitFor(() => expect(screen.queryByTestId('instance-card-tiny')).toBeNull());
    expect(screen.getByText('Run your first model')).toBeTruthy();
  });

  it('takes the key handed over in the address and removes it from there', async () => {
    history.replaceState(null, '', `/#key=${GOOD}`);
    const { takeKeyFromHash } = await import('./lib/auth.svelte');
    takeKeyFromHash();
    expect(location.hash).toBe('#/');
    expect(sessionStorage.getItem('corral.key')).toBe(GOOD);
  });
});

describe('App, navigation', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    location.hash = '#/';
  });

  it('numbers the pages in the order of the navigation', async () => {
    fakeEngine({ 'GET /api/v1/events': () => liveSse().response, 'GET /api/v1/schema': () => json(schemaFixture), 'GET /api/v1/auth/keys': () => json([]) });
    render(App);
    const nav = screen.getByRole('navigation', { name: 'Main' });
    expect([...nav.querySelectorAll('a')].map((a) => a.textContent)).toEqual(['Instances', 'Models', 'Chat', 'System', 'Connect', 'Activity', 'API keys']);
    for (const [key, hash, heading] of [
      ['2', '#/models', 'Models'],
      ['3', '#/chat', 'Chat'],
      ['4', '#/system', 'System'],
      ['5', '#/connect', 'Connect'],
      ['6', '#/activity', 'Activity'],
      ['7', '#/keys', 'API keys'],
      ['1', '#/', 'Instances'],
    ]) {
      await fireEvent.keyDown(window, { key });
      await waitFor(() => expect(screen.getByRole('heading', { level: 1 }).textContent).toBe(heading));
      expect(location.hash).toBe(hash);
      expect(nav.querySelector('[aria-current="page"]')?.textContent).toBe(heading);
    }
  });
});

describe('App, failures', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    setKey('');
  });

  it('announces an instance that fails and counts it in the title', async () => {
    const events = liveSse();
    fakeEngine({
      'GET /api/v1/events': () => events.response,
      'GET /api/v1/schema': () => json(schemaFixture),
    });
    render(App);
    events.push(`event: snapshot\ndata: ${JSON.stringify([instance])}\n\n`);
    await screen.findByTestId('instance-card-tiny');
    expect(document.title).toBe('Corral — 1 running');
    const failed = { ...instance, status: 'failed', health: null, error: 'exited with signal 9 (out of memory?)' };
    events.push(`event: instance\ndata: ${JSON.stringify(failed)}\n\n`);
    expect(await screen.findByRole('alert')).toBeTruthy();
    expect(screen.getByRole('alert').textContent).toContain('tiny failed: exited with signal 9');
    expect(document.title).toBe('(1 failed) Corral');
  });
});
