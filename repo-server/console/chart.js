// A small SVG line chart drawn with DOM calls (no library, nothing inline for the CSP to refuse).

const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * A line chart of `points` ([{x: Unix ms, y: number, label}]) with `format` for the y axis.
 * Returns an <svg> that scales with its container.
 */
export function lineChart(points, opts) {
  const o = opts || {};
  const W = 600, H = 220, L = 70, R = 12, T = 14, B = 34;
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': o.title || 'chart' });
  root.appendChild(svg('title', {}, o.title || ''));
  if (points.length === 0) {
    root.appendChild(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'chart-empty' }, 'no backups yet'));
    return root;
  }
  const xs = points.map(p => p.x), ys = points.map(p => p.y);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const y0 = 0;
  let y1 = Math.max(...ys);
  if (y1 <= y0) y1 = y0 + 1;
  const px = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + (y1 - y0) * i / 4;
    root.appendChild(svg('line', { x1: L, x2: W - R, y1: py(v), y2: py(v), class: 'grid' }));
    root.appendChild(svg('text', { x: L - 6, y: py(v) + 4, 'text-anchor': 'end', class: 'axis' }, (o.format || String)(v)));
  }
  const day = d => new Date(d).toISOString().slice(0, 16).replace('T', ' ');
  root.appendChild(svg('text', { x: L, y: H - 10, class: 'axis' }, day(x0)));
  root.appendChild(svg('text', { x: W - R, y: H - 10, 'text-anchor': 'end', class: 'axis' }, day(x1)));
  const d = points.map((p, i) => (i ? 'L' : 'M') + px(p.x).toFixed(1) + ' ' + py(p.y).toFixed(1)).join(' ');
  root.appendChild(svg('path', { d, class: 'line ' + (o.kind || '') }));
  for (const p of points) {
    const c = svg('circle', { cx: px(p.x), cy: py(p.y), r: 3, class: 'dot ' + (o.kind || '') });
    c.appendChild(svg('title', {}, (p.label ? p.label + ': ' : '') + (o.format || String)(p.y)));
    root.appendChild(c);
  }
  return root;
}
