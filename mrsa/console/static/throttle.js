// A throttle per key: run(key) at most once per interval for each key, and never twice at once.
// The first request of a quiet key runs at once (leading edge); requests during the interval or
// while a run is in flight collapse into one more run when the interval is over (trailing edge),
// so the last request is never lost.

export class KeyedThrottle {
  /**
   * @param run async (key) => void; it handles its own errors
   * @param intervalMs the least time between the starts of two runs for one key
   */
  constructor(run, intervalMs) {
    this.run = run;
    this.intervalMs = intervalMs;
    this.keys = new Map(); // key -> {last, timer, running, again}
    this.closed = false;
  }

  request(key) {
    if (this.closed) return;
    let state = this.keys.get(key);
    if (!state) {
      state = { last: -Infinity, timer: null, running: false, again: false };
      this.keys.set(key, state);
    }
    if (state.timer) return; // a run is already due: it will read the latest state
    if (state.running) {
      state.again = true;
      return;
    }
    const wait = state.last + this.intervalMs - performance.now();
    if (wait > 0) {
      state.timer = setTimeout(() => {
        state.timer = null;
        this.fire(key, state);
      }, wait);
    } else {
      this.fire(key, state);
    }
  }

  async fire(key, state) {
    if (this.closed) return;
    state.running = true;
    state.again = false;
    state.last = performance.now();
    try {
      await this.run(key);
    } finally {
      state.running = false;
      if (state.again) this.request(key);
    }
  }

  /** Drop every pending run (runs in flight finish, but start nothing more). */
  close() {
    this.closed = true;
    for (const state of this.keys.values()) clearTimeout(state.timer);
    this.keys.clear();
  }
}
