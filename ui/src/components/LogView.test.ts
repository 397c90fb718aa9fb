import { afterEach, describe, expect, it } from 'vitest';
import { render } from '@testing-library/svelte';
import { tick } from 'svelte';
import LogView from './LogView.svelte';

const lines = Array.from({ length: 50 }, (_, i) => `line ${i}`);
const view = () => document.querySelector<HTMLDivElement>('[data-testid="log-view"]');

/** Errors thrown by event listeners: jsdom reports them on window, as browsers do. */
function collectPageErrors(): { errors: unknown[]; stop: () => void } {
  const errors: unknown[] = [];
  const onError = (event: ErrorEvent) => {
    errors.push(event.error ?? event.message);
    event.preventDefault();
  };
  window.addEventListener('error', onError);
  return { errors, stop: () => window.removeEventListener('error', onError) };
}

describe('LogView', () => {
  let stop = () => {};
  afterEach(() => stop());

  it('a scroll event that arrives after the view is gone is ignored, not an error', async () => {
    // A browser fires the scroll event of a `scrollTop` set by the follow effect at the next
    // frame, even when the element has left the page by then (the user switched pages).
    const page = collectPageErrors();
    stop = page.stop;
    const { unmount } = render(LogView, { lines, version: 1, follow: true });
    const element = view();
    expect(element).toBeTruthy();
    unmount();
    await tick();
    await Promise.resolve();
    element?.dispatchEvent(new Event('scroll'));
    expect(page.errors).toEqual([]);
  });

  it('scrolling up stops following and scrolling back to the end follows again', async () => {
    let follow = true;
    render(LogView, {
      lines,
      version: 1,
      get follow() {
        return follow;
      },
      set follow(value: boolean) {
        follow = value;
      },
    });
    const element = view();
    if (!element) throw new Error('no log view');
    // No layout in jsdom: give the viewport a size and a content height.
    Object.defineProperty(element, 'clientHeight', { configurable: true, value: 190 });
    Object.defineProperty(element, 'scrollHeight', { configurable: true, value: 50 * 19 });
    element.scrollTop = 100;
    element.dispatchEvent(new Event('scroll'));
    await tick();
    expect(follow).toBe(false);
    element.scrollTop = 50 * 19 - 190;
    element.dispatchEvent(new Event('scroll'));
    await tick();
    expect(follow).toBe(true);
  });
});
