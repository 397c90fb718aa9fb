// One ticking clock for every uptime on screen, instead of a timer per card.

export const clock = $state({ now: Date.now() / 1000 });

/** Ticks every second from now on; the first value is the time of the start, not the time this
 * module was loaded (they can be seconds apart on a slow first load). */
export function startClock(): () => void {
  const tick = () => (clock.now = Date.now() / 1000);
  tick();
  const timer = setInterval(tick, 1000);
  return () => clearInterval(timer);
}
