import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import DesktopSettings from './DesktopSettings.svelte';
import SystemPage from './SystemPage.svelte';
import { fakeEngine, json, type Seen } from '../test/engine';

const text = (body: string) => () => new Response(body, { status: 200, headers: { 'Content-Type': 'text/plain' } });
const llamaServer = {
  'GET /api/v1/version': text('Version: 0.1.0\n'),
  'GET /api/v1/server/version': text('version: 6000 (abcdef)\n'),
  'GET /api/v1/server/devices': text('Available devices:\n'),
};

/** The desktop app's side of the API: settings it keeps and applies, and folders it opens. */
function desktopApp(initial = { close_to_tray: true, start_at_login: false }) {
  const settings = { ...initial };
  return {
    settings,
    routes: {
      'GET /api/v1/desktop/settings': () => json(settings),
      'PUT /api/v1/desktop/settings': (req: Seen) => json(Object.assign(settings, req.body)),
      'POST /api/v1/desktop/open': () => new Response(null, { status: 204 }),
    },
  };
}

const box = (id: string) => screen.getByTestId(id) as HTMLInputElement;
const puts = (seen: Seen[]) => seen.filter((r) => r.method === 'PUT' && r.path === '/api/v1/desktop/settings');

describe('DesktopSettings', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('stays hidden on the System page of a headless engine', async () => {
    const { seen } = fakeEngine({
      ...llamaServer,
      'GET /api/v1/desktop/settings': () =>
        json({ error: 'not_desktop', details: 'this engine runs headless: desktop settings exist only in the Corral desktop app' }, 404),
    });
    render(SystemPage);
    expect(await screen.findByText('version: 6000 (abcdef)')).toBeTruthy();
    await waitFor(() => expect(seen.some((r) => r.path === '/api/v1/desktop/settings')).toBe(true));
    // Let the 404 land before looking.
    await new Promise((resolve) => setTimeout(resolve, 0));
    expect(screen.queryByTestId('desktop-settings')).toBeNull();
    expect(screen.queryByText('Desktop app')).toBeNull();
    expect(screen.queryByText(/headless/)).toBeNull();
  });

  it('shows the desktop app\'s settings on the System page', async () => {
    const app = desktopApp({ close_to_tray: true, start_at_login: false });
    fakeEngine({ ...llamaServer, ...app.routes });
    render(SystemPage);
    const section = await screen.findByTestId('desktop-settings');
    expect(section.textContent).toContain('Desktop app');
    expect(box('setting-close_to_tray').checked).toBe(true);
    expect(box('setting-start_at_login').checked).toBe(false);
    expect(screen.getByLabelText(/Keep running in the tray when the window closes/)).toBe(box('setting-close_to_tray'));
    expect(screen.getByLabelText(/Start Corral at login/)).toBe(box('setting-start_at_login'));
    expect(screen.getByTestId('open-logs-folder').textContent).toContain('Open logs folder');
    expect(screen.getByTestId('open-data-folder').textContent).toContain('Open data folder');
  });

  it('says why when the settings cannot be read', async () => {
    fakeEngine({
      'GET /api/v1/desktop/settings': () =>
        json({ error: 'desktop_action_failed', details: 'the desktop app is not ready yet' }, 500),
    });
    render(DesktopSettings);
    expect((await screen.findByTestId('desktop-settings')).textContent).toContain('the desktop app is not ready yet');
    expect(screen.queryByTestId('setting-start_at_login')).toBeNull();
  });

  it('saves a toggle at once with only the setting that changed', async () => {
    const app = desktopApp({ close_to_tray: true, start_at_login: false });
    const { seen } = fakeEngine(app.routes);
    render(DesktopSettings);
    await screen.findByTestId('desktop-settings');

    await fireEvent.click(box('setting-start_at_login'));
    await waitFor(() => expect(puts(seen)).toHaveLength(1));
    expect(puts(seen)[0].body).toEqual({ start_at_login: true });
    await waitFor(() => expect(box('setting-start_at_login').disabled).toBe(false));
    expect(box('setting-start_at_login').checked).toBe(true);
    expect(app.settings).toEqual({ close_to_tray: true, start_at_login: true });

    await fireEvent.click(box('setting-close_to_tray'));
    await waitFor(() => expect(puts(seen)).toHaveLength(2));
    expect(puts(seen)[1].body).toEqual({ close_to_tray: false });
    await waitFor(() => expect(app.settings.close_to_tray).toBe(false));
    expect(box('setting-close_to_tray').checked).toBe(false);
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('puts a toggle back and says why when the app cannot apply it', async () => {
    const app = desktopApp({ close_to_tray: true, start_at_login: false });
    const { seen } = fakeEngine({
      ...app.routes,
      'PUT /api/v1/desktop/settings': () =>
        json({ error: 'desktop_action_failed', details: 'cannot change start at login: permission denied' }, 500),
    });
    render(DesktopSettings);
    await screen.findByTestId('desktop-settings');

    await fireEvent.click(box('setting-start_at_login'));
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('Start Corral at login');
    expect(alert.textContent).toContain('permission denied');
    expect(puts(seen)[0].body).toEqual({ start_at_login: true });
    expect(box('setting-start_at_login').checked).toBe(false);
    expect(box('setting-start_at_login').disabled).toBe(false);
    expect(box('setting-close_to_tray').checked).toBe(true);
  });

  it('asks the app to open the logs and data folders', async () => {
    const app = desktopApp();
    const { seen } = fakeEngine(app.routes);
    render(DesktopSettings);
    await screen.findByTestId('desktop-settings');
    const opens = () => seen.filter((r) => r.method === 'POST' && r.path === '/api/v1/desktop/open');

    await fireEvent.click(screen.getByTestId('open-logs-folder'));
    await waitFor(() => expect(opens()).toHaveLength(1));
    expect(opens()[0].body).toEqual({ folder: 'logs' });

    await fireEvent.click(screen.getByTestId('open-data-folder'));
    await waitFor(() => expect(opens()).toHaveLength(2));
    expect(opens()[1].body).toEqual({ folder: 'data' });
    expect(opens()[1].headers['content-type']).toBe('application/json');
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('says so when a folder cannot be opened', async () => {
    const app = desktopApp();
    fakeEngine({
      ...app.routes,
      'POST /api/v1/desktop/open': () =>
        json({ error: 'desktop_action_failed', details: 'cannot open /home/me/.local/share/corral/logs: no file manager' }, 500),
    });
    render(DesktopSettings);
    await screen.findByTestId('desktop-settings');
    await fireEvent.click(screen.getByTestId('open-logs-folder'));
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('Could not open the logs folder');
    expect(alert.textContent).toContain('no file manager');
  });
});
