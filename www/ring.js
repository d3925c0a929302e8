// The KV cache picture: the sink slots in the middle, the window's ring of slots around them
// (one thin segment per slot, brighter = newer), the write head, and the counters under it.
// `RingView.set(chatInfo)` is cheap: it writes the counters at once (tests read them right
// after a reply) and redraws the canvas at most once per animation frame, so it can be called
// on every token.

/** Age buckets of the window colour (newest brightest): runs of equal style become one arc. */
const AGE_BUCKETS = 12;
/** Above this many ring slots the segments touch (no gap): they are under a pixel wide. */
const MAX_GAPPED_SLOTS = 360;

/**
 * What the cache looks like, from `chat.info()`: the part kept forever (`sinks`), the ring
 * after it (`ring` slots, next write at `head`, `ringFilled` of them in use) and how many of
 * the newest ring slots attention still reads (`attended`).
 */
export function cacheLayout(info) {
  const slots = Math.max(0, info.slots | 0);
  const seen = Math.max(0, info.seen | 0);
  const filled = Math.max(0, Math.min(info.filled | 0, slots));
  if (info.policy === 'dense') {
    // Dense reports its capacity as `sinks` and no window: one line of slots filled in order.
    return { dense: true, slots, seen, filled, sinks: 0, sinksFilled: 0, ring: slots,
      ringFilled: filled, head: Math.min(filled, Math.max(slots - 1, 0)), attended: filled, wrapped: 0 };
  }
  const sinks = Math.max(0, Math.min(info.sinks | 0, slots));
  const ring = slots - sinks;
  const ringFilled = Math.max(0, Math.min(filled - sinks, ring));
  const head = ring > 0 ? Math.max(0, (info.writeSlot | 0) - sinks) % ring : 0;
  const wrapped = ring > 0 ? Math.max(0, Math.floor((seen - sinks) / ring)) : 0;
  const attended = Math.min(ringFilled, Math.max(0, info.window | 0) || ringFilled);
  return { dense: false, slots, seen, filled, sinks, sinksFilled: Math.min(filled, sinks), ring,
    ringFilled, head, attended, wrapped };
}

/** The counters line: "seen N tokens · M of K slots in use · wrapped X times". */
export function ringStats(info) {
  const c = cacheLayout(info);
  const base = `seen ${c.seen} tokens · ${c.filled} of ${c.slots} slots in use`;
  if (c.dense) return `${base} · dense: never wraps, stops when full`;
  // Recompute has no ring: the window is re-encoded from the text into slots 0.. when it slides.
  if (info.policy === 'recompute') return `${base} · re-encoded when it slides`;
  return `${base} · wrapped ${c.wrapped} times`;
}

/** One line on why this policy's chat never ends (or why it does). */
export function ringWhy(info) {
  const c = cacheLayout(info);
  const mem = info.gpuBytes ? ` (${(info.gpuBytes / 1e6).toFixed(0)} MB of GPU memory with the weights)` : '';
  switch (info.policy) {
    case 'sink':
      return `Why it never ends: the first ${c.sinks} tokens stay forever as attention sinks and the newest `
        + `${info.window} sit in a ring; each new token overwrites the oldest, so the cache stays at `
        + `${c.slots} slots${mem} however long the chat goes.`;
    case 'window':
      return `No sinks: once the ring wraps, the first tokens are overwritten too. Memory stays constant, `
        + `but this is StreamingLLM's failing baseline: the output degrades after the first wrap. `
        + `Pick "sink" to see the fix.`;
    case 'recompute':
      return `Re-encodes the last ${info.window} tokens for every new token: it never ends either, `
        + `but each token costs about ${info.window} times more.`;
    case 'dense':
      return `Keeps every token: memory is fixed at ${c.slots} slots${mem}, and the chat stops with `
        + `"context full" once they are all used. Pick "sink" for an endless chat.`;
    default:
      return '';
  }
}

/** The page's colours, from the CSS custom properties (so dark mode applies to the canvas too). */
function palette(el) {
  const css = getComputedStyle(el);
  const get = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  return {
    sink: get('--sink', '#f59e0b'),
    window: get('--win', '#6366f1'),
    slack: get('--slack', '#94a3b8'),
    empty: get('--empty', '#d5d9df'),
    head: get('--head', '#ef4444'),
    fg: get('--fg', '#1b1f24'),
    muted: get('--muted', '#5b6470'),
  };
}

export class RingView {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {HTMLElement} stats where the counters go
   * @param {HTMLElement} why where the one-line explanation goes
   */
  constructor(canvas, stats, why) {
    this.canvas = canvas;
    this.statsEl = stats;
    this.whyEl = why;
    this.info = null;
    this.frame = 0;
    const redraw = () => this.schedule();
    window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', redraw);
    if ('ResizeObserver' in window) new ResizeObserver(redraw).observe(canvas);
    else window.addEventListener('resize', redraw);
  }

  /** Shows `info` (a `chat.info()` object): the text now, the picture on the next frame; null clears. */
  set(info) {
    this.info = info;
    const stats = info ? ringStats(info) : 'no chat yet';
    const why = info ? ringWhy(info) : '';
    // Unchanged text is not rewritten: no layout work (or screen-reader noise) per token.
    if (this.statsEl.textContent !== stats) this.statsEl.textContent = stats;
    if (this.whyEl.textContent !== why) this.whyEl.textContent = why;
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
    const info = this.info;

    const canvas = this.canvas;
    const size = Math.max(120, Math.round(canvas.clientWidth || 260));
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(size * dpr) || canvas.height !== Math.round(size * dpr)) {
      canvas.width = Math.round(size * dpr);
      canvas.height = Math.round(size * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, size, size);
    const col = palette(canvas);
    const cx = size / 2;
    const cy = size / 2;
    const thickness = Math.max(10, size * 0.075);
    const radius = size / 2 - 12 - thickness / 2; // middle of the ring band
    const c = info ? cacheLayout(info) : null;

    if (!c || c.ring === 0) {
      ctx.lineWidth = thickness;
      ctx.strokeStyle = col.empty;
      ctx.beginPath();
      ctx.arc(cx, cy, radius, 0, 2 * Math.PI);
      ctx.stroke();
    } else {
      this.drawRing(ctx, c, col, cx, cy, radius, thickness);
    }
    this.drawCentre(ctx, c, col, cx, cy, radius - thickness / 2 - 8);
  }

  drawRing(ctx, c, col, cx, cy, radius, thickness) {
    const n = c.ring;
    const step = (2 * Math.PI) / n;
    const angle = (i) => -Math.PI / 2 + i * step; // slot 0 of the ring at the top, clockwise
    // Style of ring slot i: empty, slack (held for chunked prefill, no longer attended), or
    // attended with a brightness by age (0 = newest, just behind the write head).
    const style = (i) => {
      const age = (c.head - 1 - i + 2 * n) % n;
      if (age >= c.ringFilled) return 'e';
      if (age >= c.attended) return 's';
      return `w${Math.min(AGE_BUCKETS - 1, Math.floor((age * AGE_BUCKETS) / Math.max(c.attended, 1)))}`;
    };
    const paint = (key) => {
      if (key === 'e') return [col.empty, 1];
      if (key === 's') return [col.slack, 0.8];
      const bucket = Number(key.slice(1));
      return [col.window, 1 - (0.65 * bucket) / (AGE_BUCKETS - 1)];
    };
    ctx.lineWidth = thickness;
    ctx.lineCap = 'butt';
    const gapped = n <= MAX_GAPPED_SLOTS;
    const gap = gapped ? Math.min(step * 0.2, 0.02) : 0;
    let start = 0;
    for (let i = 1; i <= n; i++) {
      // Draw a run of equal style as one arc (every slot alone when they are wide enough to see).
      if (i < n && !gapped && style(i) === style(start)) continue;
      const [colour, alpha] = paint(style(start));
      ctx.globalAlpha = alpha;
      ctx.strokeStyle = colour;
      ctx.beginPath();
      ctx.arc(cx, cy, radius, angle(start) + gap / 2, angle(i) - gap / 2);
      ctx.stroke();
      start = i;
    }
    ctx.globalAlpha = 1;

    // The write head: a tick across the band and a triangle outside it, pointing in.
    const a = angle(c.head);
    const cos = Math.cos(a);
    const sin = Math.sin(a);
    const inner = radius - thickness / 2 - 3;
    const outer = radius + thickness / 2 + 2;
    ctx.strokeStyle = col.head;
    ctx.lineWidth = 2.5;
    ctx.beginPath();
    ctx.moveTo(cx + inner * cos, cy + inner * sin);
    ctx.lineTo(cx + outer * cos, cy + outer * sin);
    ctx.stroke();
    const tip = outer;
    const base = outer + 9;
    const half = 5;
    ctx.fillStyle = col.head;
    ctx.beginPath();
    ctx.moveTo(cx + tip * cos, cy + tip * sin);
    ctx.lineTo(cx + base * cos - half * sin, cy + base * sin + half * cos);
    ctx.lineTo(cx + base * cos + half * sin, cy + base * sin - half * cos);
    ctx.closePath();
    ctx.fill();
  }

  /** The middle: tokens seen, and the sink slots as a small grid of cells. */
  drawCentre(ctx, c, col, cx, cy, room) {
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    const font = getComputedStyle(this.canvas).fontFamily || 'system-ui, sans-serif';
    const big = Math.max(14, Math.round(room * 0.24));
    const small = Math.max(10, Math.round(room * 0.12));
    if (!c) {
      ctx.fillStyle = col.muted;
      ctx.font = `${small}px ${font}`;
      ctx.fillText('no chat yet', cx, cy);
      return;
    }
    ctx.fillStyle = col.fg;
    ctx.font = `600 ${big}px ${font}`;
    ctx.fillText(c.seen.toLocaleString('en-US'), cx, cy - room * 0.42);
    ctx.fillStyle = col.muted;
    ctx.font = `${small}px ${font}`;
    ctx.fillText('tokens seen', cx, cy - room * 0.42 + big * 0.8);

    if (c.dense) {
      ctx.fillText('dense cache: no sinks,', cx, cy + room * 0.25);
      ctx.fillText('no ring', cx, cy + room * 0.25 + small * 1.3);
      return;
    }
    if (c.sinks === 0) {
      ctx.fillText('no sinks', cx, cy + room * 0.3);
      return;
    }
    // Sinks: a grid of cells below the count (at most ~64 drawn, then "+N").
    const shown = Math.min(c.sinks, 64);
    const cols = shown <= 8 ? shown : Math.ceil(Math.sqrt(shown * 2));
    const rows = Math.ceil(shown / cols);
    const cell = Math.min(16, (room * 1.1) / cols, (room * 0.55) / rows);
    const gap = Math.max(1, cell * 0.18);
    const width = cols * cell;
    const top = cy + room * 0.05;
    for (let k = 0; k < shown; k++) {
      const x = cx - width / 2 + (k % cols) * cell;
      const y = top + Math.floor(k / cols) * cell;
      if (k < c.sinksFilled) {
        ctx.fillStyle = col.sink;
        ctx.fillRect(x + gap / 2, y + gap / 2, cell - gap, cell - gap);
      } else {
        ctx.strokeStyle = col.sink;
        ctx.lineWidth = 1;
        ctx.strokeRect(x + gap / 2 + 0.5, y + gap / 2 + 0.5, cell - gap - 1, cell - gap - 1);
      }
    }
    ctx.fillStyle = col.muted;
    const label = c.sinks > shown ? `${c.sinks} sinks (${shown} drawn)` : `${c.sinks} sink${c.sinks === 1 ? '' : 's'}, kept forever`;
    ctx.fillText(label, cx, top + rows * cell + small);
  }
}
