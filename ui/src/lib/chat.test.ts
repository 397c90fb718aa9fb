import { afterEach, describe, expect, it, vi } from 'vitest';
import { auth, setKey } from './auth.svelte';
import { ChatError, storeChatKey, storedChatKey, streamChat } from './chat';
import { fakeEngine, json, sse } from '../test/engine';

const chunk = (delta: Record<string, string>, extra: Record<string, unknown> = {}) =>
  `data: ${JSON.stringify({ choices: [{ index: 0, delta, finish_reason: null }], ...extra })}\n\n`;

/** A clock that moves 100 ms each time it is read. */
function ticking() {
  let t = 0;
  return () => (t += 100);
}

describe('streamChat', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    setKey('');
  });

  it('sends the instance as the model with the key and settings, and times the reply by its usage', async () => {
    setKey('k1');
    const { seen } = fakeEngine({
      'POST /v1/chat/completions': () =>
        sse(
          [
            chunk({ reasoning_content: 'hmm' }),
            chunk({ content: 'Hel' }),
            chunk({ content: 'lo' }),
            `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 7, completion_tokens: 5 } })}\n\n`,
            'data: [DONE]\n\n',
          ],
          false,
        ),
    });
    const updates: string[] = [];
    const reply = await streamChat('tiny', [{ role: 'user', content: 'Hi' }], { temperature: 0.2, seed: 3 }, {
      now: ticking(),
      onUpdate: (r) => updates.push(r.content),
    });
    expect(seen[0].headers.authorization).toBe('Bearer k1');
    expect(seen[0].body).toEqual({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hi' }],
      stream: true,
      stream_options: { include_usage: true },
      temperature: 0.2,
      seed: 3,
    });
    expect(reply.content).toBe('Hello');
    expect(reply.reasoning).toBe('hmm');
    expect(updates).toContain('Hel');
    // Sent at 100; tokens at 200, 300, 400: the first after 100 ms, then 4 more tokens in 200 ms.
    expect(reply.stats).toEqual({ ttftMs: 100, tokensPerSecond: 20, completionTokens: 5, promptTokens: 7, fromUsage: true });
  });

  it('sends the given key instead of the sign-in key', async () => {
    setKey('k1');
    const { seen } = fakeEngine({ 'POST /v1/chat/completions': () => sse([chunk({ content: 'ok' })], false) });
    await streamChat('tiny', [], {}, { key: 'sk-inference-scoped' });
    await streamChat('tiny', [], {});
    expect(seen.map((r) => r.headers.authorization)).toEqual(['Bearer sk-inference-scoped', 'Bearer k1']);
  });

  it('reports a 401 for the given key without asking for the sign-in key again', async () => {
    setKey('k1');
    fakeEngine({
      'POST /v1/chat/completions': () => json({ error: { message: 'Invalid API key', type: 'authentication_error' } }, 401),
    });
    const failure = await streamChat('tiny', [], {}, { key: 'sk-inference-revoked' }).catch((e) => e);
    expect(failure).toBeInstanceOf(ChatError);
    expect(failure).toMatchObject({ status: 401, message: 'Invalid API key' });
    expect(auth).toMatchObject({ key: 'k1', needed: false });
  });

  it('keeps the chat\'s key in sessionStorage only', () => {
    storeChatKey('sk-inference-scoped');
    expect(storedChatKey()).toBe('sk-inference-scoped');
    expect(Object.values({ ...sessionStorage })).toContain('sk-inference-scoped');
    expect(Object.values({ ...localStorage })).not.toContain('sk-inference-scoped');
    storeChatKey('');
    expect(storedChatKey()).toBe('');
    expect(Object.values({ ...sessionStorage })).not.toContain('sk-inference-scoped');
  });

  it('counts the chunks when the backend sends no usage', async () => {
    fakeEngine({ 'POST /v1/chat/completions': () => sse([chunk({ content: 'a' }), chunk({ content: 'b' }), chunk({ content: 'c' })], false) });
    const reply = await streamChat('tiny', [], {}, { now: ticking() });
    expect(reply.stats).toMatchObject({ completionTokens: 3, tokensPerSecond: 10, fromUsage: false });
  });

  it('reports the engine\'s error for an unknown model', async () => {
    fakeEngine({
      'POST /v1/chat/completions': () => json({ error: { message: 'no instance named ghost', type: 'invalid_request_error' } }, 404),
    });
    const failure = await streamChat('ghost', [], {}).catch((e) => e);
    expect(failure).toBeInstanceOf(ChatError);
    expect(failure).toMatchObject({ status: 404, message: 'no instance named ghost' });
  });

  it('reports an error the backend sends in the middle of the stream', async () => {
    fakeEngine({
      'POST /v1/chat/completions': () => sse([chunk({ content: 'par' }), `data: ${JSON.stringify({ error: { message: 'context full' } })}\n\n`], false),
    });
    await expect(streamChat('tiny', [], {})).rejects.toThrow('context full');
  });

  it('keeps what arrived when it is stopped', async () => {
    fakeEngine({ 'POST /v1/chat/completions': () => sse([chunk({ content: 'partial' })]) });
    const controller = new AbortController();
    const reply = await streamChat('tiny', [], {}, {
      signal: controller.signal,
      onUpdate: (r) => r.content && controller.abort(),
    });
    expect(reply.content).toBe('partial');
  });
});
