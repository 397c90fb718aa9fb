import { afterEach, describe, expect, it, vi } from 'vitest';
import { auth, setKey } from './auth.svelte';
import { followStream, SseParser, type SseEvent } from './sse';
import { fakeEngine, sse } from '../test/engine';

describe('SseParser', () => {
  it('parses named events whose lines arrive split across chunks', () => {
    const parser = new SseParser();
    const events: SseEvent[] = [];
    for (const chunk of ['event: snap', 'shot\ndata: [1,', '2]\n', '\nevent: deleted\ndata: {"name":"a"}\n\n']) {
      events.push(...parser.feed(chunk));
    }
    expect(events).toEqual([
      { event: 'snapshot', data: '[1,2]', id: undefined },
      { event: 'deleted', data: '{"name":"a"}', id: undefined },
    ]);
  });

  it('joins multi-line data, ignores keep-alive comments and accepts CRLF, even split between CR and LF', () => {
    const parser = new SseParser();
    const events = [
      ...parser.feed(': keep-alive\r\n\r\ndata: one\r'),
      ...parser.feed('\ndata: two\r\n\r\n'),
    ];
    expect(events).toEqual([{ event: 'message', data: 'one\ntwo', id: undefined }]);
  });

  it('keeps an empty log line as an event with empty data', () => {
    const parser = new SseParser();
    expect(parser.feed('event: line\ndata:\n\nevent: line\ndata:  two spaces\n\n')).toEqual([
      { event: 'line', data: '', id: undefined },
      { event: 'line', data: ' two spaces', id: undefined },
    ]);
  });

  it('does not emit an event until its blank line arrives', () => {
    const parser = new SseParser();
    expect(parser.feed('event: line\ndata: half')).toEqual([]);
    expect(parser.feed('\n\n')).toEqual([{ event: 'line', data: 'half', id: undefined }]);
  });
});

describe('followStream', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
    setKey('');
  });

  it('sends the key, delivers events, and reconnects when the stream ends', async () => {
    setKey('secret');
    let connections = 0;
    const { seen } = fakeEngine({
      'GET /api/v1/events': () => {
        connections++;
        return sse([`event: instance\ndata: {"n":${connections}}\n\n`], false);
      },
    });
    const got: string[] = [];
    const stream = followStream('/api/v1/events', { onEvent: (e) => got.push(e.data), minDelayMs: 5 });
    await vi.waitFor(() => expect(got.length).toBeGreaterThanOrEqual(2));
    stream.close();
    expect(got.slice(0, 2)).toEqual(['{"n":1}', '{"n":2}']);
    expect(seen[0].headers.authorization).toBe('Bearer secret');
  });

  it('asks for the login on 401 and stops retrying', async () => {
    setKey('stale');
    const { fetchMock } = fakeEngine({
      'GET /api/v1/events': () => new Response('{"error": {"message": "Invalid API key"}}', { status: 401 }),
    });
    const states: string[] = [];
    followStream('/api/v1/events', { onEvent: () => {}, onState: (s) => states.push(s), minDelayMs: 5 });
    await vi.waitFor(() => expect(states).toContain('unauthorized'));
    await new Promise((r) => setTimeout(r, 30));
    expect(fetchMock).toHaveBeenCalledTimes(1);
    expect(auth.needed).toBe(true);
    expect(auth.message).toMatch(/refused this key/);
  });
});
