/**
 * The charts of the audit report. Unlike concepts/plot.ts, the legend sits above the plot (rates
 * near 0, where a small model's refusal curves lie, are exactly where an inside legend would cover
 * them), x ticks are the measured values, not a round grid, and the y axis is scaled to the data
 * so that curves near 0 are not squashed into the bottom of a 0–100% axis.
 */
import { escapeXml } from '../concepts/plot.js';

export interface ChartSeries {
  readonly label: string;
  /** NaN y leaves a gap. */
  readonly points: readonly { readonly x: number; readonly y: number }[];
  readonly color: string;
  /** Interval per point, drawn as a vertical whisker. */
  readonly ci?: readonly (readonly [number, number])[];
}

export interface ChartOptions {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly xTicks: readonly number[];
  readonly hLines?: readonly { readonly y: number; readonly label: string }[];
  /** Vertical marks, such as the chosen layer. */
  readonly vLines?: readonly { readonly x: number; readonly label: string }[];
  /** Top of the y axis (a share, at most 1); default: {@link niceUpperBound} of the data. */
  readonly yMax?: number;
  readonly width?: number;
  readonly height?: number;
}

/**
 * Dash pattern and marker of the k-th series. Each series gets its own, so that series lying on
 * top of each other (all at 0%, say) stay told apart by their markers; earlier markers are larger
 * and hollow, so a later one drawn over them leaves them visible.
 */
const STYLES = [
  { dash: '', marker: 'circle', size: 6 },
  { dash: '7 4', marker: 'square', size: 5 },
  { dash: '2 3', marker: 'triangle', size: 4.5 },
  { dash: '9 3 2 3', marker: 'diamond', size: 3.5 },
  { dash: '4 2', marker: 'cross', size: 3.5 },
  { dash: '1 2', marker: 'circle', size: 2.5 },
] as const;

type Marker = (typeof STYLES)[number]['marker'];

const f = (v: number): string => Number(v.toFixed(2)).toString();

/** Room above the largest value, so that its marker and whisker end sit below the top of the axis. */
const HEADROOM = 1.2;

/**
 * The smallest "nice" bound (1, 2, 2.5 or 5 × a power of ten) at or above 1.2 × the largest value
 * (interval ends included), at most 1 (100%); 0.1 when there is nothing above 0.
 */
export function niceUpperBound(values: readonly number[]): number {
  const top = Math.max(0, ...values.filter(Number.isFinite)) * HEADROOM;
  if (top <= 0) return 0.1;
  if (top >= 1) return 1;
  const decade = 10 ** Math.floor(Math.log10(top));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * decade >= top * (1 - 1e-12)) return Math.min(1, m * decade);
  return 1;
}

/** Tick step of an axis from 0 to `bound` (4 or 5 intervals). */
function tickStep(bound: number): number {
  const decade = 10 ** Math.floor(Math.log10(bound) + 1e-12);
  const m = Math.round((bound / decade) * 10) / 10;
  return m === 2 ? bound / 4 : bound / 5;
}

function percentLabel(v: number, step: number): string {
  const digits = Math.max(0, Math.ceil(-Math.log10(100 * step) + 1e-9));
  return `${(100 * v).toFixed(digits)}%`;
}

function markerSvg(marker: Marker, x: number, y: number, size: number, color: string): string {
  const stroke = `fill="#ffffff" stroke="${color}" stroke-width="1.8"`;
  switch (marker) {
    case 'circle':
      return `<circle cx="${f(x)}" cy="${f(y)}" r="${size}" ${stroke}/>`;
    case 'square':
      return `<rect x="${f(x - size)}" y="${f(y - size)}" width="${2 * size}" height="${2 * size}" ${stroke}/>`;
    case 'triangle':
      return `<polygon points="${f(x)},${f(y - size * 1.2)} ${f(x - size * 1.1)},${f(y + size * 0.8)} ${f(x + size * 1.1)},${f(y + size * 0.8)}" ${stroke}/>`;
    case 'diamond':
      return `<polygon points="${f(x)},${f(y - size * 1.3)} ${f(x + size * 1.3)},${f(y)} ${f(x)},${f(y + size * 1.3)} ${f(x - size * 1.3)},${f(y)}" ${stroke}/>`;
    case 'cross':
      return `<path d="M${f(x - size)},${f(y - size)}L${f(x + size)},${f(y + size)}M${f(x - size)},${f(y + size)}L${f(x + size)},${f(y - size)}" fill="none" stroke="${color}" stroke-width="2"/>`;
  }
}

/**
 * A line chart of shares (0 at the bottom, the top scaled to the data) with whiskers, a marker at
 * each value, dashed goal lines, vertical marks and a legend row above the plot.
 */
export function rateChartSvg(series: readonly ChartSeries[], o: ChartOptions): string {
  const W = o.width ?? 560;
  const H = o.height ?? 340;
  const legendRows = Math.ceil(series.length / 2);
  const m = { left: 56, right: 16, top: 34 + 18 * legendRows, bottom: 46 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const xs = o.xTicks.length > 0 ? o.xTicks : series.flatMap((s) => s.points.map((p) => p.x));
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs);
  const yMax =
    o.yMax ??
    niceUpperBound(
      series.flatMap((s) => [...s.points.map((p) => p.y), ...(s.ci ?? []).flatMap((c) => [c[0], c[1]])]),
    );
  const sx = (x: number): number => m.left + (xMax > xMin ? ((x - xMin) / (xMax - xMin)) * pw : pw / 2);
  const sy = (y: number): number => m.top + ph - (Math.min(yMax, Math.max(0, y)) / yMax) * ph;
  const style = (k: number): (typeof STYLES)[number] => STYLES[k % STYLES.length];
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12" role="img" aria-label="${escapeXml(o.title)}">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="600">${escapeXml(o.title)}</text>`,
  ];
  series.forEach((s, k) => {
    const lx = m.left + (k % 2) * (pw / 2);
    const ly = 40 + 18 * Math.floor(k / 2);
    const st = style(k);
    const dash = st.dash ? ` stroke-dasharray="${st.dash}"` : '';
    out.push(
      `<line x1="${f(lx)}" y1="${ly - 4}" x2="${f(lx + 30)}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2.5"${dash}/>`,
      markerSvg(st.marker, lx + 15, ly - 4, Math.min(st.size, 4.5), s.color),
      `<text x="${f(lx + 36)}" y="${ly}">${escapeXml(s.label)}</text>`,
    );
  });
  const step = tickStep(yMax);
  for (let i = 0; i * step <= yMax * (1 + 1e-9); i++) {
    const t = i * step;
    out.push(
      `<line x1="${m.left}" y1="${f(sy(t))}" x2="${m.left + pw}" y2="${f(sy(t))}" stroke="#eaeef2"/>`,
      `<text x="${m.left - 6}" y="${f(sy(t) + 4)}" text-anchor="end">${percentLabel(t, step)}</text>`,
    );
  }
  for (const t of xs) {
    out.push(
      `<line x1="${f(sx(t))}" y1="${m.top + ph}" x2="${f(sx(t))}" y2="${m.top + ph + 5}" stroke="#24292f"/>`,
      `<text x="${f(sx(t))}" y="${m.top + ph + 18}" text-anchor="middle">${escapeXml(String(t))}</text>`,
    );
  }
  out.push(
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#24292f"/>`,
    `<line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="#24292f"/>`,
    `<text x="${m.left + pw / 2}" y="${H - 8}" text-anchor="middle">${escapeXml(o.xLabel)}</text>`,
    `<text x="14" y="${m.top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 ${m.top + ph / 2})">${escapeXml(o.yLabel)}</text>`,
  );
  // A goal line above the axis would be drawn at the top as if it were reached; leave it out.
  for (const h of (o.hLines ?? []).filter((x) => x.y <= yMax)) {
    out.push(
      `<line x1="${m.left}" y1="${f(sy(h.y))}" x2="${m.left + pw}" y2="${f(sy(h.y))}" stroke="#8c959f" stroke-dasharray="2 3"/>`,
      `<text x="${m.left + pw - 4}" y="${f(sy(h.y) - 4)}" text-anchor="end" fill="#57606a" font-size="11">${escapeXml(h.label)}</text>`,
    );
  }
  for (const v of o.vLines ?? []) {
    const x = sx(v.x);
    const right = x > m.left + pw / 2;
    out.push(
      `<line x1="${f(x)}" y1="${m.top}" x2="${f(x)}" y2="${m.top + ph}" stroke="#24292f" stroke-width="1.5" stroke-dasharray="4 2"/>`,
      // At the foot of the plot: curves of a per-layer probe run along the top.
      `<text x="${f(right ? x - 4 : x + 4)}" y="${m.top + ph - 8}" text-anchor="${right ? 'end' : 'start'}" font-weight="600">${escapeXml(v.label)}</text>`,
    );
  }
  series.forEach((s, k) => {
    const st = style(k);
    const dash = st.dash ? ` stroke-dasharray="${st.dash}"` : '';
    // Whiskers of series at the same value would hide each other; a small nudge keeps each visible.
    const nudge = (k - (series.length - 1) / 2) * 2;
    s.ci?.forEach((c, i) => {
      const x = sx(s.points[i].x) + nudge;
      if (!Number.isFinite(c[0]) || !Number.isFinite(c[1])) return;
      out.push(
        `<line x1="${f(x)}" y1="${f(sy(c[0]))}" x2="${f(x)}" y2="${f(sy(c[1]))}" stroke="${s.color}" stroke-opacity="0.35" stroke-width="4"/>`,
      );
    });
    const runs: { x: number; y: number }[][] = [[]];
    for (const p of s.points) {
      if (Number.isFinite(p.y)) runs[runs.length - 1].push({ x: sx(p.x) + nudge, y: sy(p.y) });
      else if (runs[runs.length - 1].length > 0) runs.push([]);
    }
    for (const r of runs) {
      if (r.length > 1)
        out.push(
          `<polyline points="${r.map((p) => `${f(p.x)},${f(p.y)}`).join(' ')}" fill="none" stroke="${s.color}" stroke-width="2.5"${dash}/>`,
        );
      for (const p of r) out.push(markerSvg(st.marker, p.x, p.y, st.size, s.color));
    }
  });
  out.push('</svg>');
  return out.join('\n');
}

export interface BarSeries {
  readonly label: string;
  readonly color: string;
  /** One value per category (NaN: no bar), with its interval. */
  readonly values: readonly number[];
  readonly ci?: readonly (readonly [number, number])[];
}

/**
 * Grouped bars of shares: one group per category, one bar per series, each with its value printed
 * above it and a whisker for its interval, goal lines dashed, the legend above the plot.
 */
export function barChartSvg(
  categories: readonly string[],
  series: readonly BarSeries[],
  o: Pick<ChartOptions, 'title' | 'yLabel' | 'hLines' | 'yMax' | 'width' | 'height'>,
): string {
  const W = o.width ?? 560;
  const H = o.height ?? 340;
  const legendRows = Math.ceil(series.length / 2);
  const m = { left: 56, right: 16, top: 34 + 18 * legendRows, bottom: 34 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const yMax =
    o.yMax ??
    niceUpperBound(series.flatMap((s) => [...s.values, ...(s.ci ?? []).flatMap((c) => [c[0], c[1]])]));
  const sy = (y: number): number => m.top + ph - (Math.min(yMax, Math.max(0, y)) / yMax) * ph;
  const groupW = pw / categories.length;
  const barW = (groupW * 0.8) / series.length;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12" role="img" aria-label="${escapeXml(o.title)}">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="600">${escapeXml(o.title)}</text>`,
  ];
  series.forEach((s, k) => {
    const lx = m.left + (k % 2) * (pw / 2);
    const ly = 40 + 18 * Math.floor(k / 2);
    out.push(
      `<rect x="${f(lx)}" y="${ly - 10}" width="14" height="10" fill="${s.color}"/>`,
      `<text x="${f(lx + 20)}" y="${ly}">${escapeXml(s.label)}</text>`,
    );
  });
  const step = tickStep(yMax);
  for (let i = 0; i * step <= yMax * (1 + 1e-9); i++) {
    const t = i * step;
    out.push(
      `<line x1="${m.left}" y1="${f(sy(t))}" x2="${m.left + pw}" y2="${f(sy(t))}" stroke="#eaeef2"/>`,
      `<text x="${m.left - 6}" y="${f(sy(t) + 4)}" text-anchor="end">${percentLabel(t, step)}</text>`,
    );
  }
  categories.forEach((c, i) => {
    out.push(
      `<text x="${f(m.left + (i + 0.5) * groupW)}" y="${m.top + ph + 18}" text-anchor="middle">${escapeXml(c)}</text>`,
    );
    series.forEach((s, k) => {
      const v = s.values[i];
      if (!Number.isFinite(v)) return;
      const x = m.left + i * groupW + groupW * 0.1 + k * barW;
      const top = sy(v);
      out.push(
        `<rect x="${f(x + 1)}" y="${f(top)}" width="${f(barW - 2)}" height="${f(m.top + ph - top)}" fill="${s.color}"/>`,
      );
      const ci = s.ci?.[i];
      if (ci && Number.isFinite(ci[0]) && Number.isFinite(ci[1]))
        out.push(
          `<line x1="${f(x + barW / 2)}" y1="${f(sy(ci[0]))}" x2="${f(x + barW / 2)}" y2="${f(sy(ci[1]))}" stroke="#24292f" stroke-width="1.5"/>`,
        );
      const labelY = Math.min(top, ci && Number.isFinite(ci[1]) ? sy(ci[1]) : top) - 4;
      out.push(
        `<text x="${f(x + barW / 2)}" y="${f(Math.max(m.top + 10, labelY))}" text-anchor="middle" font-size="10">${Math.round(100 * v)}</text>`,
      );
    });
  });
  out.push(
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#24292f"/>`,
    `<line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="#24292f"/>`,
    `<text x="14" y="${m.top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 ${m.top + ph / 2})">${escapeXml(o.yLabel)}</text>`,
  );
  for (const h of (o.hLines ?? []).filter((x) => x.y <= yMax))
    out.push(
      `<line x1="${m.left}" y1="${f(sy(h.y))}" x2="${m.left + pw}" y2="${f(sy(h.y))}" stroke="#8c959f" stroke-dasharray="2 3"/>`,
      `<text x="${m.left + pw - 4}" y="${f(sy(h.y) - 4)}" text-anchor="end" fill="#57606a" font-size="11">${escapeXml(h.label)}</text>`,
    );
  out.push('</svg>');
  return out.join('\n');
}
