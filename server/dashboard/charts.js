// Charts drawn on <canvas> by hand: a histogram, a heatmap, a scatter plot
// and parallel coordinates. They draw what the server already reduced to a
// bounded size (bins, cells, a sample of points), never a run's points.

/** A canvas sized to its box at the device's pixel ratio; its 2D context. */
function setup(canvas) {
  const r = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400, h = canvas.clientHeight || 260;
  canvas.width = Math.round(w * r);
  canvas.height = Math.round(h * r);
  const g = canvas.getContext("2d");
  g.setTransform(r, 0, 0, r, 0, 0);
  g.clearRect(0, 0, w, h);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#1d2330";
  return { g, w, h };
}

/** A short label for a number. */
export function fmt(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return x.toExponential(2);
  if (Number.isInteger(x)) return String(x);
  const s = x.toPrecision(4);
  return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
}

/** Viridis-like colour for t in [0, 1]. */
function colour(t) {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.max(0, Math.min(1, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/** Bars of `hist.counts` between hist.min and hist.max. */
export function histogram(canvas, hist) {
  const { g, w, h } = setup(canvas);
  const pad = { l: 44, r: 8, t: 8, b: 26 };
  const top = Math.max(1, ...hist.counts);
  const bw = (w - pad.l - pad.r) / hist.counts.length;
  g.fillStyle = "#2f6fdb";
  hist.counts.forEach((c, i) => {
    const bh = (h - pad.t - pad.b) * c / top;
    g.fillRect(pad.l + i * bw + 1, h - pad.b - bh, Math.max(1, bw - 2), bh);
  });
  g.fillStyle = "#6b7280";
  g.fillText(fmt(hist.min), pad.l, h - 8);
  const right = fmt(hist.max);
  g.fillText(right, w - pad.r - g.measureText(right).width, h - 8);
  g.fillText(fmt(top), 2, pad.t + 10);
  g.fillText("0", 2, h - pad.b);
}

/** Cells coloured by value, axis labels along the bottom and left side. */
export function heatmap(canvas, hm) {
  const { g, w, h } = setup(canvas);
  const rows = hm.cells.length, cols = rows ? hm.cells[0].length : 0;
  const pad = { l: 70, r: 60, t: 8, b: 34 };
  const vals = hm.cells.flat().filter((v) => v !== null);
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const cw = (w - pad.l - pad.r) / Math.max(1, cols), ch = (h - pad.t - pad.b) / Math.max(1, rows);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = hm.cells[r][c];
      g.fillStyle = v === null ? "#eef0f3" : colour(hi > lo ? (v - lo) / (hi - lo) : 0.5);
      // Row 0 at the bottom.
      g.fillRect(pad.l + c * cw, h - pad.b - (r + 1) * ch, Math.ceil(cw), Math.ceil(ch));
    }
  }
  g.fillStyle = "#1d2330";
  const every = (n, room) => Math.max(1, Math.ceil(n / Math.max(1, room)));
  const xs = every(cols, (w - pad.l - pad.r) / 50), ys = every(rows, (h - pad.t - pad.b) / 16);
  hm.x[1].forEach((l, c) => { if (c % xs === 0) g.fillText(String(l).slice(0, 8), pad.l + c * cw, h - pad.b + 13); });
  hm.y[1].forEach((l, r) => { if (r % ys === 0) g.fillText(String(l).slice(0, 10), 2, h - pad.b - r * ch - 2); });
  g.fillStyle = "#6b7280";
  g.fillText(`${hm.x[0]} →`, pad.l, h - 4);
  g.fillText(`↑ ${hm.y[0]}`, 2, pad.t + 10);
  // Colour scale.
  for (let i = 0; i < 100; i++) {
    g.fillStyle = colour(i / 99);
    g.fillRect(w - pad.r + 12, h - pad.b - (i + 1) * (h - pad.t - pad.b) / 100, 12, Math.ceil((h - pad.t - pad.b) / 100));
  }
  g.fillStyle = "#1d2330";
  g.fillText(fmt(hi), w - pad.r + 26, pad.t + 10);
  g.fillText(fmt(lo), w - pad.r + 26, h - pad.b);
}

/** Numeric value of a sample cell (text values by their rank). */
function numeric(column) {
  const texts = [...new Set(column.filter((v) => typeof v === "string"))].sort();
  return column.map((v) => (typeof v === "string" ? texts.indexOf(v) : v));
}

/** `rows[*][xi]` against `rows[*][yi]`, coloured by `rows[*][ci]`. */
export function scatter(canvas, sample, xi, yi, ci) {
  const { g, w, h } = setup(canvas);
  const pad = { l: 50, r: 10, t: 10, b: 28 };
  const col = (i) => numeric(sample.rows.map((r) => r[i]));
  const xs = col(xi), ys = col(yi), cs = col(ci);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const [c0, c1] = [Math.min(...cs), Math.max(...cs)];
  const sx = (x) => pad.l + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (w - pad.l - pad.r);
  const sy = (y) => h - pad.b - (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5) * (h - pad.t - pad.b);
  xs.forEach((x, i) => {
    g.fillStyle = colour(c1 > c0 ? (cs[i] - c0) / (c1 - c0) : 0.5);
    g.fillRect(sx(x) - 2, sy(ys[i]) - 2, 4, 4);
  });
  g.fillStyle = "#6b7280";
  g.fillText(fmt(x0), pad.l, h - 8);
  const r = fmt(x1);
  g.fillText(r, w - pad.r - g.measureText(r).width, h - 8);
  g.fillText(fmt(y1), 2, pad.t + 10);
  g.fillText(fmt(y0), 2, h - pad.b);
}

/** One polyline per point across every column, coloured by column `ci`. */
export function parallel(canvas, sample, names, ci) {
  const { g, w, h } = setup(canvas);
  const pad = { l: 20, r: 20, t: 22, b: 12 };
  const n = names.length;
  const cols = names.map((_, i) => numeric(sample.rows.map((r) => r[i + 1])));
  const span = cols.map((c) => [Math.min(...c), Math.max(...c)]);
  const x = (i) => pad.l + (n > 1 ? i / (n - 1) : 0.5) * (w - pad.l - pad.r);
  const y = (i, v) => h - pad.b - (span[i][1] > span[i][0] ? (v - span[i][0]) / (span[i][1] - span[i][0]) : 0.5) * (h - pad.t - pad.b);
  const [c0, c1] = span[ci];
  g.globalAlpha = 0.35;
  sample.rows.forEach((_, p) => {
    g.strokeStyle = colour(c1 > c0 ? (cols[ci][p] - c0) / (c1 - c0) : 0.5);
    g.beginPath();
    cols.forEach((c, i) => (i ? g.lineTo(x(i), y(i, c[p])) : g.moveTo(x(i), y(i, c[p]))));
    g.stroke();
  });
  g.globalAlpha = 1;
  g.fillStyle = "#1d2330";
  names.forEach((name, i) => {
    g.fillRect(x(i), pad.t, 1, h - pad.t - pad.b);
    g.fillText(name, Math.min(w - 60, Math.max(0, x(i) - 15)), 12);
  });
}
