/**
 * Standalone SVG charts as strings (no DOM, no dependencies), so the CLI can write them to files
 * and an HTML report can inline them. Text is escaped; colours work on light backgrounds.
 */

export interface LineSeries {
  readonly label: string;
  /** Points in x order; NaN y values leave a gap. */
  readonly points: readonly { readonly x: number; readonly y: number }[];
  /** Optional interval per point (same length as points), drawn as a band. */
  readonly band?: readonly (readonly [number, number])[];
  readonly color?: string;
  readonly dashed?: boolean;
}

export interface LineChartOptions {
  readonly title?: string;
  readonly xLabel?: string;
  readonly yLabel?: string;
  /** Y range (default [0, 1]). */
  readonly yMin?: number;
  readonly yMax?: number;
  /** Horizontal reference lines, e.g. { y: 0.95, label: '95%' }. */
  readonly hLines?: readonly { readonly y: number; readonly label: string }[];
  readonly width?: number;
  readonly height?: number;
}

const PALETTE = ['#1f6feb', '#d1242f', '#1a7f37', '#8250df', '#bf8700'];

/** Escapes text for SVG content and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!,
  );
}

function fmt(v: number): string {
  return Number(v.toFixed(2)).toString();
}

/** Ticks at a 1/2/5 × 10^k step, about `count` of them, covering [lo, hi]. */
function ticks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + 1e-9 * step; v += step)
    out.push(Number(v.toPrecision(12)));
  return out;
}

/** A line chart with axes, ticks, labels, a legend, optional bands and reference lines. */
export function lineChartSvg(series: readonly LineSeries[], opts: LineChartOptions = {}): string {
  const W = opts.width ?? 640;
  const H = opts.height ?? 360;
  const m = { left: 60, right: 20, top: opts.title ? 40 : 20, bottom: 50 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  const xMin = xs.length > 0 ? Math.min(...xs) : 0;
  const xMax = xs.length > 0 ? Math.max(...xs) : 1;
  const yMin = opts.yMin ?? 0;
  const yMax = opts.yMax ?? 1;
  const sx = (x: number): number => m.left + (xMax > xMin ? ((x - xMin) / (xMax - xMin)) * pw : pw / 2);
  const sy = (y: number): number =>
    m.top + ph - ((Math.min(yMax, Math.max(yMin, y)) - yMin) / (yMax - yMin)) * ph;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`,
  );
  if (opts.title)
    out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15">${escapeXml(opts.title)}</text>`);
  // Grid and ticks.
  for (const t of ticks(yMin, yMax, 5)) {
    out.push(
      `<line x1="${m.left}" y1="${fmt(sy(t))}" x2="${m.left + pw}" y2="${fmt(sy(t))}" stroke="#eaeef2"/>`,
      `<text x="${m.left - 6}" y="${fmt(sy(t) + 4)}" text-anchor="end">${escapeXml(String(t))}</text>`,
    );
  }
  const xTicks = ticks(xMin, xMax, Math.min(10, Math.max(1, xMax - xMin))).filter(
    (t) => Number.isInteger(t) || xMax - xMin < 10,
  );
  for (const t of xTicks) {
    out.push(
      `<line x1="${fmt(sx(t))}" y1="${m.top + ph}" x2="${fmt(sx(t))}" y2="${m.top + ph + 5}" stroke="#24292f"/>`,
      `<text x="${fmt(sx(t))}" y="${m.top + ph + 18}" text-anchor="middle">${escapeXml(String(t))}</text>`,
    );
  }
  // Axes.
  out.push(
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#24292f"/>`,
    `<line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="#24292f"/>`,
  );
  if (opts.xLabel)
    out.push(
      `<text x="${m.left + pw / 2}" y="${H - 10}" text-anchor="middle">${escapeXml(opts.xLabel)}</text>`,
    );
  if (opts.yLabel) {
    out.push(
      `<text x="16" y="${m.top + ph / 2}" text-anchor="middle" transform="rotate(-90 16 ${m.top + ph / 2})">${escapeXml(opts.yLabel)}</text>`,
    );
  }
  for (const h of opts.hLines ?? []) {
    out.push(
      `<line x1="${m.left}" y1="${fmt(sy(h.y))}" x2="${m.left + pw}" y2="${fmt(sy(h.y))}" stroke="#57606a" stroke-dasharray="6 4"/>`,
      `<text x="${m.left + pw - 4}" y="${fmt(sy(h.y) - 4)}" text-anchor="end" fill="#57606a">${escapeXml(h.label)}</text>`,
    );
  }
  series.forEach((s, k) => {
    const color = s.color ?? PALETTE[k % PALETTE.length];
    if (s.band && s.band.length === s.points.length) {
      const ok = s.points
        .map((p, i) => ({ x: p.x, b: s.band![i] }))
        .filter((q) => Number.isFinite(q.b[0]) && Number.isFinite(q.b[1]));
      if (ok.length > 1) {
        const upper = ok.map((q) => `${fmt(sx(q.x))},${fmt(sy(q.b[1]))}`);
        const lower = ok.map((q) => `${fmt(sx(q.x))},${fmt(sy(q.b[0]))}`).reverse();
        out.push(
          `<polygon points="${[...upper, ...lower].join(' ')}" fill="${color}" fill-opacity="0.15" stroke="none"/>`,
        );
      }
    }
    // Split the line at NaN values.
    const runs: string[][] = [[]];
    for (const p of s.points) {
      if (Number.isFinite(p.y)) runs[runs.length - 1].push(`${fmt(sx(p.x))},${fmt(sy(p.y))}`);
      else if (runs[runs.length - 1].length > 0) runs.push([]);
    }
    const dash = s.dashed ? ' stroke-dasharray="4 3"' : '';
    for (const r of runs) {
      if (r.length > 1)
        out.push(`<polyline points="${r.join(' ')}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
      for (const pt of r) {
        const [cx, cy] = pt.split(',');
        out.push(`<circle cx="${cx}" cy="${cy}" r="2.5" fill="${color}"/>`);
      }
    }
    // Legend, bottom right inside the plot.
    const ly = m.top + ph - 12 - (series.length - 1 - k) * 16;
    const lx = m.left + pw - 150;
    out.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 20}" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<text x="${lx + 26}" y="${ly + 4}">${escapeXml(s.label)}</text>`,
    );
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** Per-layer metrics as conceptAccuracySvg takes them (Concept.layers fits). */
export interface LayerMetricPoint {
  readonly layer: number;
  readonly metrics: {
    readonly accuracy: number;
    readonly accuracyCi: readonly [number, number];
    readonly auroc: number;
    readonly split: string;
  };
}

/**
 * The "concept emerges in the middle layers" figure: held-out probe accuracy per layer with its
 * 95% interval, AUROC, and a dashed line at 95%.
 */
export function conceptAccuracySvg(
  layers: readonly LayerMetricPoint[],
  opts: { title?: string } = {},
): string {
  const split = layers[0]?.metrics.split ?? 'test';
  return lineChartSvg(
    [
      {
        label: `${split} accuracy (95% CI)`,
        points: layers.map((p) => ({ x: p.layer, y: p.metrics.accuracy })),
        band: layers.map((p) => p.metrics.accuracyCi),
      },
      {
        label: `${split} AUROC`,
        points: layers.map((p) => ({ x: p.layer, y: p.metrics.auroc })),
        dashed: true,
      },
    ],
    {
      title: opts.title,
      xLabel: 'layer (block output, resid_post)',
      yLabel: 'probe accuracy / AUROC',
      yMin: Math.max(
        0,
        Math.floor(
          10 * Math.min(0.5, ...layers.map((p) => p.metrics.accuracyCi[0]).filter(Number.isFinite)),
        ) / 10,
      ),
      yMax: 1,
      hLines: [{ y: 0.95, label: '95%' }],
    },
  );
}
