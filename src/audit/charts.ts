/**
 * The steering charts of the audit report. Unlike concepts/plot.ts, the legend sits above the
 * plot (rates near 0, where a small model's refusal curves lie, are exactly where an inside
 * legend would cover them) and x ticks are the measured coefficients, not a round grid.
 */
import { escapeXml } from '../concepts/plot.js';

export interface ChartSeries {
  readonly label: string;
  /** NaN y leaves a gap. */
  readonly points: readonly { readonly x: number; readonly y: number }[];
  readonly color: string;
  readonly dashed?: boolean;
  /** Interval per point, drawn as a vertical whisker. */
  readonly ci?: readonly (readonly [number, number])[];
}

export interface ChartOptions {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly xTicks: readonly number[];
  readonly hLines?: readonly { readonly y: number; readonly label: string }[];
  readonly width?: number;
  readonly height?: number;
}

const f = (v: number): string => Number(v.toFixed(2)).toString();

/** A 0–100% line chart with whiskers, dashed goal lines and a legend row above the plot. */
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
  const sx = (x: number): number => m.left + (xMax > xMin ? ((x - xMin) / (xMax - xMin)) * pw : pw / 2);
  const sy = (y: number): number => m.top + ph - Math.min(1, Math.max(0, y)) * ph;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12" role="img" aria-label="${escapeXml(o.title)}">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="600">${escapeXml(o.title)}</text>`,
  ];
  series.forEach((s, k) => {
    const lx = m.left + (k % 2) * (pw / 2);
    const ly = 40 + 18 * Math.floor(k / 2);
    const dash = s.dashed ? ' stroke-dasharray="5 3"' : '';
    out.push(
      `<line x1="${f(lx)}" y1="${ly - 4}" x2="${f(lx + 24)}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2.5"${dash}/>`,
      `<text x="${f(lx + 30)}" y="${ly}">${escapeXml(s.label)}</text>`,
    );
  });
  for (let t = 0; t <= 1.0001; t += 0.2) {
    out.push(
      `<line x1="${m.left}" y1="${f(sy(t))}" x2="${m.left + pw}" y2="${f(sy(t))}" stroke="#eaeef2"/>`,
      `<text x="${m.left - 6}" y="${f(sy(t) + 4)}" text-anchor="end">${Math.round(t * 100)}%</text>`,
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
  for (const h of o.hLines ?? []) {
    out.push(
      `<line x1="${m.left}" y1="${f(sy(h.y))}" x2="${m.left + pw}" y2="${f(sy(h.y))}" stroke="#8c959f" stroke-dasharray="2 3"/>`,
      `<text x="${m.left + pw - 4}" y="${f(sy(h.y) - 4)}" text-anchor="end" fill="#57606a" font-size="11">${escapeXml(h.label)}</text>`,
    );
  }
  series.forEach((s, k) => {
    const dash = s.dashed ? ' stroke-dasharray="5 3"' : '';
    // Series on top of each other (all at 0%) stay visible when nudged apart by a pixel or two.
    const nudge = (k - (series.length - 1) / 2) * 1.2;
    s.ci?.forEach((c, i) => {
      const x = sx(s.points[i].x) + nudge;
      if (!Number.isFinite(c[0]) || !Number.isFinite(c[1])) return;
      out.push(
        `<line x1="${f(x)}" y1="${f(sy(c[0]))}" x2="${f(x)}" y2="${f(sy(c[1]))}" stroke="${s.color}" stroke-opacity="0.35" stroke-width="5"/>`,
      );
    });
    const runs: string[][] = [[]];
    for (const p of s.points) {
      if (Number.isFinite(p.y)) runs[runs.length - 1].push(`${f(sx(p.x) + nudge)},${f(sy(p.y))}`);
      else if (runs[runs.length - 1].length > 0) runs.push([]);
    }
    for (const r of runs) {
      if (r.length > 1)
        out.push(
          `<polyline points="${r.join(' ')}" fill="none" stroke="${s.color}" stroke-width="2.5"${dash}/>`,
        );
      for (const pt of r) {
        const [cx, cy] = pt.split(',');
        out.push(`<circle cx="${cx}" cy="${cy}" r="3.5" fill="${s.color}"/>`);
      }
    }
  });
  out.push('</svg>');
  return out.join('\n');
}
