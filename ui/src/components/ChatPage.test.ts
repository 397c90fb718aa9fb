import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import ChatPage, { resetChat } from './ChatPage.svelte';
import { auth, setKey } from '../lib/auth.svelte';
import { instances, upsert } from '../lib/instances.svelte';
import type { Instance } from '../lib/types';
import { fakeEngine, json, liveSse, sse } from '../test/engine';

const instance = (name: string, status: string, on_demand_start = false) =>
  ({
    name,
    status,
    created: 1,
    options: { backend_type: 'llama_cpp', backend_options: { model: `/m/${name}.gguf` }, on_demand_start },
    health: status === 'running' ? 'ready' : null,
    restarts: 0,
    requests: 0,
    in_flight: 0,
  }) as unknown as Instance;

const chunk = (delta: Record<string, string>) => `data: ${JSON.stringify({ choices: [{ index: 0, delta }] })}\n\n`;
const usage = (completion_tokens: number) => `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 4, completion_tokens } })}\n\n`;

async function ask(text: string) {
  await fireEvent.input(screen.getByTestId('chat-input'), { target: { value: text } });
  await fireEvent.keyDown(screen.getByTestId('chat-input'), { key: 'Enter' });
}

describe('ChatPage', () => {
  beforeEach(() => {
    resetChat();
    sessionStorage.clear();
    localStorage.clear();
    instances.byName = {};
    instances.loaded = true;
    upsert(instance('tiny', 'running'));
    upsert(instance('sleepy', 'stopped', true));
    upsert(instance('off', 'stopped'));
  });
  afterEach(() => {
    vi.unstubAllGlobals();
    setKey('');
  });

  it('offers the instances /v1 can answer and streams the reply as it arrives', async () => {
    const stream = liveSse();
    const { seen } = fakeEngine({ 'POST /v1/chat/completions': () => stream.response });
    render(ChatPage, {});
    const picker = screen.getByTestId('chat-instance') as HTMLSelectElement;
    expect([...picker.options].map((o) => o.textContent)).toEqual(['sleepy (starts on demand)', 'tiny']);
    expect(picker.value).toBe('tiny');

    await fireEvent.input(screen.getByTestId('chat-system'), { target: { value: 'Be brief.' } });
    await fireEvent.input(screen.getByTestId('chat-temperature'), { target: { value: '0.3' } });
    await fireEvent.input(screen.getByTestId('chat-max_tokens'), { target: { value: '64' } });
    await fireEvent.input(screen.getByTestId('chat-top_k'), { target: { value: '40' } });
    await fireEvent.input(screen.getByTestId('chat-min_p'), { target: { value: '0.05' } });
    await fireEvent.input(screen.getByTestId('chat-repeat_penalty'), { target: { value: '1.1' } });
    await ask('Say hello');
    await waitFor(() => expect(seen).toHaveLength(1));
    expect(seen[0].body).toMatchObject({
      model: 'tiny',
      stream: true,
      temperature: 0.3,
      max_tokens: 64,
      top_k: 40,
      min_p: 0.05,
      repeat_penalty: 1.1,
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Say hello' },
      ],
    });
    expect(seen[0].body).not.toHaveProperty('top_p');
    expect(seen[0].body).not.toHaveProperty('repetition_penalty');

    stream.push(chunk({ reasoning_content: 'The user wants a greeting.' }));
    stream.push(chunk({ content: 'Hello **there**' }));
    const reply = await screen.findByTestId('chat-assistant');
    await waitFor(() => expect(reply.querySelector('strong')?.textContent).toBe('there'));
    expect(screen.getByTestId('chat-stop')).toBeTruthy();
    const reasoning = screen.getByTestId('chat-reasoning') as HTMLDetailsElement;
    expect(reasoning.open).toBe(false);
    expect(reasoning.textContent).toContain('The user wants a greeting.');

    stream.push(chunk({ content: '!' }));
    stream.push(usage(12));
    stream.push('data: [DONE]\n\n');
    stream.close();
    const stats = await screen.findByTestId('chat-stats');
    expect(stats.textContent).toMatch(/first token \d+ ms · [\d.]+ tokens\/s · 12 tokens · 4 in the prompt/);
    expect(reply.textContent).toContain('Hello there!');
    expect(screen.getByTestId('chat-send')).toBeTruthy();
  });

  it('shows markup in a reply as text, never as elements', async () => {
    const attack = 'Look: <img src=x onerror="window.pwned=1"> and <script>window.pwned=1</script> [x](javascript:window.pwned=1)';
    fakeEngine({ 'POST /v1/chat/completions': () => sse([chunk({ content: attack }), usage(3)], false) });
    render(ChatPage, { name: 'tiny' });
    await ask('hi');
    await screen.findByTestId('chat-stats');
    const reply = screen.getByTestId('chat-assistant');
    expect(reply.querySelector('img, script, a')).toBeNull();
    expect(reply.textContent).toContain('<img src=x onerror="window.pwned=1">');
    expect(reply.textContent).toContain('<script>window.pwned=1</script>');
    expect((window as unknown as { pwned?: number }).pwned).toBeUndefined();
  });

  it('sends the conversation so far, and the stop button ends a reply keeping its text', async () => {
    const first = liveSse();
    const { seen } = fakeEngine({
      'POST /v1/chat/completions': () => (seen.length === 1 ? first.response : sse([chunk({ content: 'Second.' })], false)),
    });
    render(ChatPage, { name: 'tiny' });
    await ask('One');
    first.push(chunk({ content: 'Partial answ' }));
    await waitFor(() => expect(screen.getByTestId('chat-assistant').textContent).toContain('Partial answ'));
    await fireEvent.click(screen.getByTestId('chat-stop'));
    expect((await screen.findByTestId('chat-stats')).textContent).toContain('stopped');

    await ask('Two');
    await waitFor(() => expect(screen.getAllByTestId('chat-assistant')[1].textContent).toContain('Second.'));
    expect((seen[1].body as { messages: unknown[] }).messages).toEqual([
      { role: 'user', content: 'One' },
      { role: 'assistant', content: 'Partial answ' },
      { role: 'user', content: 'Two' },
    ]);
  });

  it('shows the API\'s error in the conversation', async () => {
    fakeEngine({
      'POST /v1/chat/completions': () => json({ error: { message: 'instance sleepy failed to start', type: 'server_error' } }, 503),
    });
    render(ChatPage, { name: 'sleepy' });
    await ask('hi');
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toBe('instance sleepy failed to start (HTTP 503)');
    // Not about a key: the sign-in key was sent.
    expect(screen.queryByTestId('chat-key-refused')).toBeNull();
  });

  it('sends the API key from the settings instead of the sign-in key, and the sign-in key once it is cleared', async () => {
    setKey('sign-in-key');
    const { seen } = fakeEngine({ 'POST /v1/chat/completions': () => sse([chunk({ content: 'Hi.' }), usage(1)], false) });
    const first = render(ChatPage, { name: 'tiny' });
    await ask('With the sign-in key');
    await waitFor(() => expect(screen.getAllByTestId('chat-stats')).toHaveLength(1));
    expect(screen.queryByTestId('chat-api-key-set')).toBeNull();

    const field = screen.getByTestId('chat-api-key') as HTMLInputElement;
    expect(field.type).toBe('password');
    await fireEvent.input(field, { target: { value: ' sk-inference-scoped ' } });
    expect(sessionStorage.getItem('corral.chat.key')).toBe(' sk-inference-scoped ');
    expect(Object.values({ ...localStorage })).toEqual([]);
    expect(screen.getByTestId('chat-api-key-set')).toBeTruthy();
    await ask('With the scoped key');
    await waitFor(() => expect(screen.getAllByTestId('chat-stats')).toHaveLength(2));
    expect(document.body.textContent).not.toContain('sk-inference-scoped');
    expect(location.href).not.toContain('sk-inference-scoped');

    // Another visit of the page in this tab finds it again.
    first.unmount();
    render(ChatPage, { name: 'tiny' });
    expect((screen.getByTestId('chat-api-key') as HTMLInputElement).value).toBe(' sk-inference-scoped ');
    await fireEvent.click(screen.getByTestId('chat-api-key-clear'));
    expect((screen.getByTestId('chat-api-key') as HTMLInputElement).value).toBe('');
    expect(sessionStorage.getItem('corral.chat.key')).toBeNull();
    expect((screen.getByTestId('chat-api-key-clear') as HTMLButtonElement).disabled).toBe(true);
    await ask('With the sign-in key again');
    await waitFor(() => expect(screen.getAllByTestId('chat-stats')).toHaveLength(3));

    expect(seen.map((r) => r.headers.authorization)).toEqual(['Bearer sign-in-key', 'Bearer sk-inference-scoped', 'Bearer sign-in-key']);
  });

  it('shows the engine refusing the API key, and stays signed in', async () => {
    setKey('sign-in-key');
    fakeEngine({
      'POST /v1/chat/completions': () => json({ error: { message: 'Invalid API key', type: 'authentication_error' } }, 401),
    });
    render(ChatPage, { name: 'tiny' });
    await fireEvent.input(screen.getByTestId('chat-api-key'), { target: { value: 'sk-inference-revoked' } });
    await ask('hi');
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toBe('Invalid API key (HTTP 401)');
    expect(screen.getByTestId('chat-key-refused').textContent).toMatch(/API key from the settings/);
    expect(auth).toMatchObject({ key: 'sign-in-key', needed: false });
  });

  it('shows the permission the API key lacks for the instance', async () => {
    const message = "this API key may not use instance 'tiny'";
    fakeEngine({
      'POST /v1/chat/completions': () => json({ error: { message, type: 'invalid_request_error', code: 'permission_denied' } }, 403),
    });
    render(ChatPage, { name: 'tiny' });
    await fireEvent.input(screen.getByTestId('chat-api-key'), { target: { value: 'sk-inference-other' } });
    await ask('hi');
    expect((await screen.findByRole('alert')).textContent).toBe(`${message} (HTTP 403)`);
    expect(screen.getByTestId('chat-key-refused')).toBeTruthy();
  });

  it('keeps the conversation and settings when the page is left and opened again', async () => {
    fakeEngine({ 'POST /v1/chat/completions': () => sse([chunk({ content: 'Kept.' }), usage(1)], false) });
    const first = render(ChatPage, { name: 'tiny' });
    await fireEvent.input(screen.getByTestId('chat-system'), { target: { value: 'Be brief.' } });
    await ask('Remember me');
    await screen.findByTestId('chat-stats');
    first.unmount();
    render(ChatPage, { name: 'tiny' });
    expect(screen.getByTestId('chat-user').textContent).toContain('Remember me');
    expect(screen.getByTestId('chat-assistant').textContent).toContain('Kept.');
    expect((screen.getByTestId('chat-system') as HTMLTextAreaElement).value).toBe('Be brief.');
  });

  it('says when the chosen instance cannot answer', async () => {
    render(ChatPage, { name: 'off' });
    expect(screen.getByText(/off is stopped and does not start on demand/)).toBeTruthy();
  });
});
