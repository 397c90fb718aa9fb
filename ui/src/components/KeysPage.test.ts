import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import KeysPage from './KeysPage.svelte';
import App from '../App.svelte';
import { instances, upsert } from '../lib/instances.svelte';
import type { ApiKey } from '../lib/keys';
import type { Instance } from '../lib/types';
import { fakeEngine, json, liveSse, type Seen } from '../test/engine';
import { schemaFixture } from '../test/schema.fixture';

const now = () => Math.floor(Date.now() / 1000);
const DAY = 86_400;

const instance = (name: string) =>
  ({
    name,
    status: 'running',
    created: 1,
    options: { backend_type: 'llama_cpp', backend_options: { model: `/m/${name}.gguf` } },
    health: 'ready',
    restarts: 0,
    requests: 0,
    in_flight: 0,
  }) as unknown as Instance;

const apiKey = (id: number, change: Partial<ApiKey> = {}): ApiKey => ({
  id,
  name: `key-${id}`,
  user_id: '',
  permission_mode: 'allow_all',
  expires_at: null,
  created_at: now() - (10 - id) * DAY,
  updated_at: now() - (10 - id) * DAY,
  last_used_at: null,
  instance_ids: [],
  prefix: `sk-inference-${String(id).padStart(16, '0')}…`,
  expired: false,
  ...change,
});

const PLAINTEXT = 'sk-inference-00000000000000070123456789abcdef0123456789abcdef0123456789abcdef';

const rows = () => screen.queryAllByTestId('keys-row');
const names = () => rows().map((row) => row.dataset.name);
const row = (name: string) => rows().find((r) => r.dataset.name === name)!;
const cell = (name: string, testid: string) => within(row(name)).getByTestId(testid).textContent!.trim();
const writes = (seen: Seen[]) => seen.filter((r) => r.method !== 'GET');

describe('KeysPage', () => {
  let writeText: ReturnType<typeof vi.fn>;

  beforeEach(() => {
    instances.byName = {};
    instances.loaded = true;
    upsert(instance('tiny'));
    upsert(instance('big'));
    upsert(instance('other'));
    writeText = vi.fn(async () => {});
    Object.defineProperty(navigator, 'clipboard', { value: { writeText }, configurable: true });
  });
  afterEach(() => {
    vi.unstubAllGlobals();
    localStorage.clear();
    sessionStorage.clear();
  });

  it('lists the keys, newest first, with their scope, use and expiry', async () => {
    fakeEngine({
      'GET /api/v1/auth/keys': () =>
        json([
          apiKey(1, { name: 'ci' }),
          apiKey(2, { name: 'editor', permission_mode: 'per_instance', instance_ids: ['big', 'tiny'], expires_at: now() + 30 * DAY, last_used_at: now() - 300 }),
          apiKey(3, { name: 'old', permission_mode: 'per_instance', instance_ids: ['deleted-one'], expires_at: now() - DAY, expired: true }),
        ]),
    });
    render(KeysPage);
    expect(screen.getByRole('heading', { level: 1 }).textContent).toBe('API keys');
    await waitFor(() => expect(names()).toEqual(['old', 'editor', 'ci']));

    expect(cell('ci', 'keys-prefix')).toBe('sk-inference-0000000000000001…');
    expect(within(row('ci')).getByTestId('keys-prefix').classList.contains('mono')).toBe(true);
    expect(cell('ci', 'keys-scope')).toBe('All instances');
    expect(cell('ci', 'keys-last-used')).toBe('never');
    expect(cell('ci', 'keys-expiry-cell')).toBe('never');
    expect(cell('ci', 'keys-created')).not.toBe('');

    expect(cell('editor', 'keys-scope')).toBe('big, tiny');
    expect(cell('editor', 'keys-last-used')).toBe('5 min ago');
    const expiry = new Date((now() + 30 * DAY) * 1000).toLocaleDateString(undefined, { dateStyle: 'medium' });
    expect(cell('editor', 'keys-expiry-cell')).toBe(expiry);
    expect(within(row('editor')).getByTestId('keys-expire')).toBeTruthy();

    expect(cell('old', 'keys-expiry-cell')).toBe('expired');
    // An instance deleted since is still named, struck through.
    expect(within(row('old')).getByText('deleted-one').classList.contains('gone')).toBe(true);
    // An expired key offers to work again instead of expiring.
    expect(within(row('old')).queryByTestId('keys-expire')).toBeNull();
    expect(within(row('old')).getByTestId('keys-renew')).toBeTruthy();
    expect(screen.getAllByRole('columnheader').map((h) => h.textContent?.trim())).toEqual([
      'Name', 'Key', 'Instances', 'Created', 'Last used', 'Expires', 'Actions',
    ]);
  });

  it('makes a key for the instances chosen and shows its plaintext once, with a copy button', async () => {
    const { seen } = fakeEngine({
      'GET /api/v1/auth/keys': () => json([apiKey(1, { name: 'ci' })]),
      'POST /api/v1/auth/keys': (req) => {
        const b = req.body as { name: string; instance_ids: string[]; expires_at: number };
        return json({ ...apiKey(7, { name: b.name, permission_mode: 'per_instance', instance_ids: b.instance_ids, expires_at: b.expires_at, created_at: now() }), key: PLAINTEXT }, 201);
      },
    });
    render(KeysPage);
    await waitFor(() => expect(names()).toEqual(['ci']));
    // The instances are chosen only for a key of chosen instances.
    expect(screen.queryByTestId('keys-instance-tiny')).toBeNull();

    const before = now();
    await fireEvent.input(screen.getByTestId('keys-name'), { target: { value: '  my editor ' } });
    await fireEvent.click(screen.getByTestId('keys-scope-some'));
    await fireEvent.click(await screen.findByTestId('keys-instance-tiny'));
    await fireEvent.click(screen.getByTestId('keys-instance-big'));
    await fireEvent.change(screen.getByTestId('keys-expiry'), { target: { value: '30' } });
    await fireEvent.click(screen.getByTestId('keys-submit'));

    const box = await screen.findByTestId('keys-new-key-box');
    const posts = writes(seen);
    expect(posts).toHaveLength(1);
    expect(posts[0].path).toBe('/api/v1/auth/keys');
    const sent = posts[0].body as { name: string; permission_mode: string; instance_ids: string[]; expires_at: number };
    expect(sent).toEqual({ name: 'my editor', permission_mode: 'per_instance', instance_ids: ['big', 'tiny'], expires_at: expect.any(Number) });
    expect(sent.expires_at).toBeGreaterThanOrEqual(before + 30 * DAY);
    expect(sent.expires_at).toBeLessThanOrEqual(now() + 30 * DAY);

    expect(screen.getByTestId('keys-new-key').textContent).toBe(PLAINTEXT);
    expect(box.textContent).toMatch(/you will not see it again/i);
    expect(screen.getByTestId('keys-snippet').textContent).toBe(`curl ${location.origin}/v1/models \\\n  -H "Authorization: Bearer ${PLAINTEXT}"`);
    expect(document.activeElement).toBe(box);
    await fireEvent.click(screen.getByTestId('keys-copy'));
    await waitFor(() => expect(writeText).toHaveBeenCalledWith(PLAINTEXT));
    expect(screen.getByTestId('keys-copy').textContent).toBe('Copied ✓');

    // The list shows the new key (its prefix, never the secret) on top; the form is empty again.
    expect(names()).toEqual(['my editor', 'ci']);
    expect(cell('my editor', 'keys-scope')).toBe('big, tiny');
    expect(row('my editor').textContent).not.toContain(PLAINTEXT);
    expect(screen.getByTestId<HTMLInputElement>('keys-name').value).toBe('');
    expect(screen.getByTestId<HTMLInputElement>('keys-scope-all').checked).toBe(true);

    // Once dismissed, the plaintext is nowhere: not on the page, not in the browser's storage.
    await fireEvent.click(screen.getByTestId('keys-new-key-done'));
    expect(screen.queryByTestId('keys-new-key')).toBeNull();
    expect(document.body.innerHTML).not.toContain(PLAINTEXT);
    const stored = [...Object.values(localStorage), ...Object.values(sessionStorage)].join('\n');
    expect(stored).not.toContain(PLAINTEXT);
  });

  it('makes a key for every instance with no expiry, sending neither instances nor expiry', async () => {
    const { seen } = fakeEngine({
      'GET /api/v1/auth/keys': () => json([]),
      'POST /api/v1/auth/keys': (req) => json({ ...apiKey(1, { name: (req.body as { name: string }).name }), key: PLAINTEXT }, 201),
    });
    render(KeysPage);
    await screen.findByTestId('keys-empty');
    await fireEvent.input(screen.getByTestId('keys-name'), { target: { value: 'ci' } });
    await fireEvent.click(screen.getByTestId('keys-submit'));
    await screen.findByTestId('keys-new-key');
    expect(writes(seen).map((r) => r.body)).toEqual([{ name: 'ci', permission_mode: 'allow_all' }]);
    expect(screen.queryByTestId('keys-empty')).toBeNull();
    expect(cell('ci', 'keys-scope')).toBe('All instances');
  });

  it('shows what is wrong by the field: its own checks first, then the engine\'s', async () => {
    let answer: Response | null = null;
    const { seen } = fakeEngine({
      'GET /api/v1/auth/keys': () => json([]),
      'POST /api/v1/auth/keys': () => answer!,
    });
    render(KeysPage);
    await screen.findByTestId('keys-empty');

    // Nothing is sent without a name, or with no instance chosen.
    await fireEvent.click(screen.getByTestId('keys-scope-some'));
    await fireEvent.click(screen.getByTestId('keys-submit'));
    expect((await screen.findByTestId('keys-error-name')).textContent).toMatch(/name/);
    expect(screen.getByTestId('keys-error-instance_ids').textContent).toMatch(/at least one instance/);
    expect(screen.getByTestId('keys-name').getAttribute('aria-invalid')).toBe('true');
    expect(writes(seen)).toEqual([]);

    await fireEvent.input(screen.getByTestId('keys-name'), { target: { value: 'editor' } });
    expect(screen.queryByTestId('keys-error-name')).toBeNull();
    await fireEvent.click(screen.getByTestId('keys-instance-tiny'));
    expect(screen.queryByTestId('keys-error-instance_ids')).toBeNull();

    // A date is needed when the expiry is "on a date".
    await fireEvent.change(screen.getByTestId('keys-expiry'), { target: { value: 'date' } });
    await fireEvent.click(screen.getByTestId('keys-submit'));
    expect((await screen.findByTestId('keys-error-expires_at')).textContent).toMatch(/date/);
    expect(writes(seen)).toEqual([]);
    await fireEvent.change(screen.getByTestId('keys-expiry'), { target: { value: 'never' } });

    // The engine's refusal shows at the field it names.
    answer = json({ error: 'invalid_key_request', details: 'no instance named "tiny"', field: 'instance_ids' }, 400);
    await fireEvent.click(screen.getByTestId('keys-submit'));
    await waitFor(() => expect(screen.getByTestId('keys-error-instance_ids').textContent).toBe('no instance named "tiny"'));
    expect(writes(seen)).toHaveLength(1);
    expect(screen.queryByTestId('keys-new-key')).toBeNull();

    answer = json({ error: 'invalid_key_request', details: 'name must not hold control characters', field: 'name' }, 400);
    await fireEvent.click(screen.getByTestId('keys-submit'));
    await waitFor(() => expect(screen.getByTestId('keys-error-name').textContent).toBe('name must not hold control characters'));
    expect(screen.queryByTestId('keys-error-instance_ids')).toBeNull();
    // The form keeps what was typed, to be corrected.
    expect(screen.getByTestId<HTMLInputElement>('keys-name').value).toBe('editor');

    // An error about no field shows above the button.
    answer = json({ error: 'key_store_error', details: 'disk full' }, 500);
    await fireEvent.click(screen.getByTestId('keys-submit'));
    expect((await screen.findByTestId('keys-form-error')).textContent).toContain('disk full');
  });

  it('expires a key now, and lets an expired one work again', async () => {
    const { seen } = fakeEngine({
      'GET /api/v1/auth/keys': () => json([apiKey(1, { name: 'ci' }), apiKey(2, { name: 'editor' })]),
      'PATCH /api/v1/auth/keys/2': (req) => {
        const at = (req.body as { expires_at: number | null }).expires_at;
        return json(apiKey(2, { name: 'editor', expires_at: at, expired: at != null && at <= now() }));
      },
    });
    render(KeysPage);
    await waitFor(() => expect(names()).toEqual(['editor', 'ci']));

    const before = now();
    await fireEvent.click(within(row('editor')).getByTestId('keys-expire'));
    await waitFor(() => expect(cell('editor', 'keys-expiry-cell')).toBe('expired'));
    const patches = writes(seen);
    expect(patches.map((r) => [r.method, r.path])).toEqual([['PATCH', '/api/v1/auth/keys/2']]);
    const at = (patches[0].body as { expires_at: number }).expires_at;
    expect(at).toBeGreaterThanOrEqual(before);
    expect(at).toBeLessThanOrEqual(now());
    expect(cell('ci', 'keys-expiry-cell')).toBe('never');

    await fireEvent.click(within(row('editor')).getByTestId('keys-renew'));
    await waitFor(() => expect(cell('editor', 'keys-expiry-cell')).toBe('never'));
    expect(writes(seen).at(-1)?.body).toEqual({ expires_at: null });
  });

  it('revokes a key only once confirmed, and removes its row', async () => {
    const { seen } = fakeEngine({
      'GET /api/v1/auth/keys': () => json([apiKey(1, { name: 'ci' }), apiKey(2, { name: 'editor' })]),
      'DELETE /api/v1/auth/keys/2': () => new Response(null, { status: 204 }),
    });
    render(KeysPage);
    await waitFor(() => expect(names()).toEqual(['editor', 'ci']));

    await fireEvent.click(within(row('editor')).getByTestId('keys-revoke'));
    const dialog = await screen.findByRole('dialog', { name: 'Revoke editor?' });
    expect(dialog.textContent).toContain('sk-inference-0000000000000002…');
    expect(writes(seen)).toEqual([]);
    await fireEvent.click(within(dialog).getByRole('button', { name: 'Cancel' }));
    await waitFor(() => expect(screen.queryByRole('dialog')).toBeNull());
    expect(writes(seen)).toEqual([]);
    expect(names()).toEqual(['editor', 'ci']);

    await fireEvent.click(within(row('editor')).getByTestId('keys-revoke'));
    await fireEvent.click(await screen.findByTestId('keys-confirm-revoke'));
    await waitFor(() => expect(names()).toEqual(['ci']));
    expect(writes(seen).map((r) => [r.method, r.path])).toEqual([['DELETE', '/api/v1/auth/keys/2']]);
    expect(screen.queryByRole('dialog')).toBeNull();
  });

  it('says when there are none, when the engine cannot be read, and when it has no keys at all', async () => {
    let answer = () => json([]);
    fakeEngine({ 'GET /api/v1/auth/keys': () => answer() });
    render(KeysPage);
    expect((await screen.findByTestId('keys-empty')).textContent).toContain('No API keys yet');

    answer = () => json({ error: 'key_store_error', details: 'the key file is unreadable' }, 500);
    await fireEvent.click(screen.getByRole('button', { name: 'Refresh' }));
    expect((await screen.findByTestId('keys-error')).textContent).toContain('the key file is unreadable');
    expect(screen.getByRole('alert')).toBeTruthy();

    answer = () => json([apiKey(1, { name: 'ci' })]);
    await fireEvent.click(screen.getByRole('button', { name: 'Try again' }));
    await waitFor(() => expect(names()).toEqual(['ci']));
    expect(screen.queryByTestId('keys-error')).toBeNull();

    answer = () => json({ error: 'not_found', details: 'no route' }, 404);
    await fireEvent.click(screen.getByRole('button', { name: 'Refresh' }));
    expect((await screen.findByTestId('keys-error')).textContent).toContain('older than this page');
  });
});

describe('KeysPage, in the app', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    location.hash = '#/';
  });

  it('is a page of the navigation; the plaintext goes when the page is left', async () => {
    const events = liveSse();
    const stored: ApiKey[] = [];
    fakeEngine({
      'GET /api/v1/events': () => events.response,
      'GET /api/v1/schema': () => json(schemaFixture),
      'GET /api/v1/auth/keys': () => json(stored),
      'POST /api/v1/auth/keys': () => {
        stored.push(apiKey(1, { name: 'ci' }));
        return json({ ...apiKey(1, { name: 'ci' }), key: PLAINTEXT }, 201);
      },
    });
    render(App);
    await fireEvent.click(screen.getByTestId('nav-keys'));
    await waitFor(() => expect(screen.getByRole('heading', { level: 1 }).textContent).toBe('API keys'));
    expect(location.hash).toBe('#/keys');
    await screen.findByTestId('keys-empty');
    await fireEvent.input(screen.getByTestId('keys-name'), { target: { value: 'ci' } });
    await fireEvent.click(screen.getByTestId('keys-submit'));
    expect((await screen.findByTestId('keys-new-key')).textContent).toBe(PLAINTEXT);

    await fireEvent.click(screen.getByTestId('nav-activity'));
    await waitFor(() => expect(screen.getByRole('heading', { level: 1 }).textContent).toBe('Activity'));
    await fireEvent.click(screen.getByTestId('nav-keys'));
    await waitFor(() => expect(screen.getByRole('heading', { level: 1 }).textContent).toBe('API keys'));
    await waitFor(() => expect(rows()).toHaveLength(1));
    expect(screen.queryByTestId('keys-new-key')).toBeNull();
    expect(document.body.innerHTML).not.toContain(PLAINTEXT);
  });
});
