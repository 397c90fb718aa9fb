// One ticking clock for every uptime on screen, instead of a timer per card.

export const clock = $state({ now: Date.now() / 1000 });

export function startClock(): () => void {
  const timer = setInterval(() => (clock.now = Date.now() / 1000), 1000);
  return () => clearInterval(timer);
}
