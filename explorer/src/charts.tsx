// Plain SVG charts: usage bars, a bar chart over time, an uptime timeline.

export type Usage = { label: string; used: number; total: number; text: string };

/** One horizontal bar per resource: reserved over total. */
export function UsageBars({ rows, testid }: { rows: Usage[]; testid?: string }) {
  const w = 360;
  const rowH = 26;
  return (
    <svg class="chart" width={w + 330} height={rows.length * rowH + 4} data-testid={testid} role="img">
      {rows.map((r, i) => {
        const frac = r.total > 0 ? Math.min(1, r.used / r.total) : 0;
        const y = i * rowH + 2;
        const color = frac > 0.9 ? '#d9534f' : frac > 0.7 ? '#f0ad4e' : '#3b82c4';
        return (
          <g key={r.label}>
            <text x={0} y={y + 16} class="axis">{r.label}</text>
            <rect x={60} y={y + 3} width={w} height={16} rx={3} fill="#e8edf2" />
            <rect x={60} y={y + 3} width={Math.max(frac > 0 ? 2 : 0, w * frac)} height={16} rx={3} fill={color} />
            <text x={60 + w + 8} y={y + 16} class="axis">{r.text} ({Math.round(frac * 100)} %)</text>
          </g>
        );
      })}
    </svg>
  );
}

export type Point = { x: number; y: number; title: string };

/** Bars at their time (x in ms), heights relative to the largest. */
export function TimeBars({ points, yText, testid, empty }: { points: Point[]; yText: (y: number) => string; testid?: string; empty: string }) {
  if (points.length === 0) return <p class="muted" data-testid={testid}>{empty}</p>;
  const W = 560;
  const H = 140;
  const pad = { l: 70, r: 10, t: 10, b: 24 };
  const minX = Math.min(...points.map((p) => p.x));
  const maxX = Math.max(...points.map((p) => p.x));
  const maxY = Math.max(...points.map((p) => p.y), 1);
  const span = Math.max(maxX - minX, 1);
  const bw = Math.max(3, Math.min(24, ((W - pad.l - pad.r) / points.length) * 0.7));
  const sx = (x: number) => pad.l + ((x - minX) / span) * (W - pad.l - pad.r - bw);
  const sy = (y: number) => H - pad.b - (y / maxY) * (H - pad.t - pad.b);
  return (
    <svg class="chart" width={W} height={H} data-testid={testid} role="img">
      <line x1={pad.l} y1={H - pad.b} x2={W - pad.r} y2={H - pad.b} stroke="#999" />
      <text x={pad.l - 6} y={pad.t + 8} class="axis" text-anchor="end">{yText(maxY)}</text>
      <text x={pad.l - 6} y={H - pad.b} class="axis" text-anchor="end">0</text>
      {points.map((p, i) => (
        <rect key={i} x={sx(p.x)} y={sy(p.y)} width={bw} height={H - pad.b - sy(p.y)} fill="#3b82c4">
          <title>{p.title}</title>
        </rect>
      ))}
      <text x={pad.l} y={H - 6} class="axis">{new Date(minX).toLocaleTimeString()}</text>
      <text x={W - pad.r} y={H - 6} class="axis" text-anchor="end">{new Date(maxX).toLocaleTimeString()}</text>
    </svg>
  );
}

/**
 * A node's heartbeats on a time line: a tick per heartbeat, green where consecutive heartbeats
 * are within the timeout (online), red gaps otherwise.
 */
export function UptimeTimeline({ beats, from, to, timeoutMs, testid }: { beats: number[]; from: number; to: number; timeoutMs: number; testid?: string }) {
  const W = 560;
  const H = 56;
  const l = 10;
  const r = 10;
  const span = Math.max(to - from, 1);
  const sx = (t: number) => l + ((t - from) / span) * (W - l - r);
  const segs: [number, number, boolean][] = [];
  let prev = from;
  let online = false;
  for (const b of beats) {
    segs.push([prev, b, online && b - prev <= timeoutMs]);
    prev = b;
    online = true;
  }
  segs.push([prev, to, online && to - prev <= timeoutMs]);
  const onMs = segs.filter((s) => s[2]).reduce((a, s) => a + (s[1] - s[0]), 0);
  return (
    <div>
      <svg class="chart" width={W} height={H} data-testid={testid} role="img">
        {segs.map(([a, b, on], i) => (
          <rect key={i} x={sx(a)} y={14} width={Math.max(0, sx(b) - sx(a))} height={16} fill={on ? '#4caf50' : '#e8edf2'} />
        ))}
        {beats.map((b, i) => <line key={i} x1={sx(b)} x2={sx(b)} y1={10} y2={34} stroke="#2e7d32"><title>{new Date(b).toLocaleString()}</title></line>)}
        <text x={l} y={50} class="axis">{new Date(from).toLocaleTimeString()}</text>
        <text x={W - r} y={50} class="axis" text-anchor="end">{new Date(to).toLocaleTimeString()}</text>
      </svg>
      <div class="muted">{beats.length} heartbeats; online {Math.round((onMs / span) * 100)} % of the window shown</div>
    </div>
  );
}
