import { configure } from '@testing-library/svelte';
import { vi } from 'vitest';

// The deadlines of these tests catch hangs, not slowness: on a loaded machine (CI's two cores
// shared with builds) rendering a page can take seconds, and that is still a pass. Every wait
// returns as soon as its condition holds; only a test that never gets there runs into them.
vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });
configure({ asyncUtilTimeout: 20_000 });

// jsdom lacks a few browser APIs the components use.
if (!window.matchMedia) {
  window.matchMedia = (query: string) =>
    ({ matches: false, media: query, addEventListener() {}, removeEventListener() {} }) as unknown as MediaQueryList;
}
if (!Element.prototype.scrollIntoView) Element.prototype.scrollIntoView = () => {};
if (!window.requestAnimationFrame) {
  window.requestAnimationFrame = (cb: FrameRequestCallback) => setTimeout(() => cb(performance.now()), 0) as unknown as number;
}
if (!('ResizeObserver' in window)) {
  // No layout in jsdom: nothing ever resizes.
  (window as unknown as { ResizeObserver: unknown }).ResizeObserver = class {
    observe() {}
    unobserve() {}
    disconnect() {}
  };
}
// The chat follows its reply down the page; jsdom has no layout to scroll.
window.scrollTo = () => {};
