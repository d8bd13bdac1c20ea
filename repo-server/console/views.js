// The console's pages. Every value from the API goes into the page as text (textContent or
// attributes), never as HTML.

import { api, allBackups, download, ApiError } from './api.js';
import { lineChart } from './chart.js';

/** Builds an element: el('a', {href: '#/'}, 'text', child, ...). */
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return e;
}

export function bytes(n) {
  if (n === undefined || n === null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0, v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + u[i];
}

function when(t) {
  return t ? t.replace('T', ' ').replace('Z', ' UTC') : '–';
}

function ratio(logical, stored) {
  return stored > 0 ? (logical / stored) : 0;
}

function table(head, rows, attrs) {
  return el('div', { class: 'scroll' },
    el('table', attrs || {},
      el('thead', {}, el('tr', {}, head.map(h => el('th', {}, h)))),
      el('tbody', {}, rows)));
}

function card(label, value, id) {
  return el('div', { class: 'card', id }, el('div', { class: 'card-label' }, label), el('div', { class: 'card-value' }, value));
}

function link(href, text, attrs) {
  return el('a', Object.assign({ href }, attrs || {}), text);
}

function q(params) {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') s.set(k, String(v));
  return s.toString();
}

const SKIP_REASONS = ['hole', 'zero', 'swap', 'free', 'excluded', 'unchanged'];

/** The overview: repository stats (admins), sources, and the stored-bytes / dedup chart. */
export async function overview(main, me) {
  const [sources, backups, stats] = await Promise.all([
    api('/v1/sources'),
    allBackups(),
    me.role === 'admin' ? api('/v1/stats') : Promise.resolve(null),
  ]);
  main.replaceChildren(el('h1', {}, 'Overview'));
  if (stats) {
    main.appendChild(el('section', { class: 'cards', id: 'repo-stats' },
      card('Backups', stats.backups, 'stat-backups'),
      card('Sources', stats.sources, 'stat-sources'),
      card('Chunks', stats.chunks, 'stat-chunks'),
      card('Logical', bytes(stats.logical_bytes), 'stat-logical'),
      card('Stored', bytes(stats.stored_bytes), 'stat-stored'),
      card('Dedup ratio', stats.dedup_ratio.toFixed(2) + '×', 'stat-dedup'),
      card('Open sessions', stats.open_sessions, 'stat-sessions')));
  }
  main.appendChild(el('h2', {}, 'Sources'));
  if (sources.length === 0) {
    main.appendChild(el('p', { class: 'muted', id: 'no-sources' }, 'No backups yet for tenant ' + me.tenant + '.'));
  } else {
    main.appendChild(table(['Source', 'Tenant', 'Backups', 'Last backup', 'Logical bytes'],
      sources.map(s => el('tr', { class: 'source-row', 'data-source': s.source, 'data-tenant': s.tenant },
        el('td', {}, link('#/source/' + encodeURIComponent(s.source) + '?' + q({ tenant: s.tenant }), s.source)),
        el('td', {}, s.tenant),
        el('td', { class: 'num' }, s.backups),
        el('td', {}, when(s.last_backup)),
        el('td', { class: 'num' }, bytes(s.logical_bytes)))),
      { id: 'sources' }));
  }
  // Over time: what the backups added to the store, and logical ÷ stored so far.
  const asc = backups.slice().sort((a, b) => a.created.localeCompare(b.created));
  let logical = 0, stored = 0;
  const storedPts = [], dedupPts = [];
  for (const m of asc) {
    logical += m.stats.logical_bytes;
    stored += m.stats.stored_bytes;
    const x = Date.parse(m.created);
    storedPts.push({ x, y: stored, label: m.source + ' ' + m.id });
    dedupPts.push({ x, y: ratio(logical, stored), label: m.source + ' ' + m.id });
  }
  main.appendChild(el('h2', {}, 'Over time'));
  main.appendChild(el('div', { class: 'charts' },
    el('figure', { id: 'chart-stored' }, lineChart(storedPts, { title: 'Stored bytes', format: bytes, kind: 'a' }),
      el('figcaption', {}, 'Stored bytes (sum of what each backup added)')),
    el('figure', { id: 'chart-dedup' }, lineChart(dedupPts, { title: 'Dedup ratio', format: v => v.toFixed(1) + '×', kind: 'b' }),
      el('figcaption', {}, 'Dedup ratio (logical ÷ stored, cumulative)'))));
}

/** A source's chain of backups, newest first, with base links. */
export async function source(main, me, name, params) {
  const tenant = params.get('tenant');
  let list = await allBackups({ source: name });
  if (tenant) list = list.filter(m => m.tenant === tenant);
  const full = list.filter(m => !m.base).length;
  const incr = list.length - full;
  const ids = new Set(list.map(m => m.id));
  main.replaceChildren(
    el('p', { class: 'crumbs' }, link('#/', 'Overview'), ' › ', name),
    el('h1', {}, 'Source ', el('span', { class: 'mono' }, name)),
    el('p', { id: 'chain-summary', 'data-total': list.length, 'data-full': full, 'data-incremental': incr },
      `${list.length} backups: ${full} full, ${incr} incremental` + (tenant ? ` (tenant ${tenant})` : '')),
    table(['Backup', 'Kind', 'Base', 'Created', 'Logical', 'Stored', 'New chunks', 'Reused chunks', 'Took'],
      list.map(m => el('tr', { class: 'backup-row', 'data-id': m.id, 'data-kind': m.base ? 'incremental' : 'full' },
        el('td', { class: 'mono' }, link('#/backup/' + encodeURIComponent(m.id), m.id)),
        el('td', {}, el('span', { class: 'tag ' + (m.base ? 'incr' : 'full') }, m.base ? 'incremental' : 'full')),
        el('td', { class: 'mono' }, m.base ? (ids.has(m.base) ? link('#/backup/' + encodeURIComponent(m.base), '↳ ' + m.base) : '↳ ' + m.base) : '–'),
        el('td', {}, when(m.created)),
        el('td', { class: 'num' }, bytes(m.stats.logical_bytes)),
        el('td', { class: 'num' }, bytes(m.stats.stored_bytes)),
        el('td', { class: 'num new-chunks' }, m.stats.new_chunks),
        el('td', { class: 'num reused-chunks' }, m.stats.reused_chunks),
        el('td', { class: 'num' }, (m.stats.duration_ms / 1000).toFixed(1) + ' s'))),
      { id: 'chain' }));
}

function lastVerify() {
  try { return JSON.parse(sessionStorage.getItem('backup-console-last-verify') || 'null'); } catch (_) { return null; }
}

/** A backup's page: disks, skipped bytes, stats, verify state, retention and immutability. */
export async function backup(main, me, id) {
  const m = await api('/v1/backups/' + encodeURIComponent(id));
  let retention = null;
  if (me.role === 'admin') retention = await api('/v1/admin/retention');
  const skipped = m.stats.skipped_bytes || {};
  const reasons = SKIP_REASONS.concat(Object.keys(skipped).filter(k => !SKIP_REASONS.includes(k)));
  const sec = el('section', { id: 'backup-page' },
    el('p', { class: 'crumbs' }, link('#/', 'Overview'), ' › ',
      link('#/source/' + encodeURIComponent(m.source) + '?' + q({ tenant: m.tenant }), m.source), ' › ', m.id),
    el('h1', {}, 'Backup ', el('span', { class: 'mono', id: 'backup-id' }, m.id)),
    el('dl', { class: 'facts' },
      el('dt', {}, 'Source'), el('dd', {}, m.source),
      el('dt', {}, 'Tenant'), el('dd', {}, m.tenant),
      el('dt', {}, 'Created'), el('dd', {}, when(m.created)),
      el('dt', {}, 'Kind'), el('dd', { id: 'backup-kind' }, m.base ? 'incremental' : 'full'),
      el('dt', {}, 'Base'), el('dd', { class: 'mono' }, m.base ? link('#/backup/' + encodeURIComponent(m.base), m.base) : '–'),
      el('dt', {}, 'Labels'), el('dd', {}, Object.entries(m.labels).map(([k, v]) => k + '=' + v).join(', ') || '–')),
    el('h2', {}, 'Data'),
    el('section', { class: 'cards' },
      card('Logical', bytes(m.stats.logical_bytes)),
      card('Read', bytes(m.stats.read_bytes)),
      card('Sent', bytes(m.stats.sent_bytes)),
      card('Stored', bytes(m.stats.stored_bytes)),
      card('New chunks', m.stats.new_chunks, 'backup-new'),
      card('Reused chunks', m.stats.reused_chunks, 'backup-reused'),
      card('Took', (m.stats.duration_ms / 1000).toFixed(1) + ' s')),
    el('h2', {}, 'Disks'),
    table(['Disk', 'Size', 'Block size', 'Blocks', 'Holes', 'Index blake3'],
      m.disks.map(d => el('tr', {},
        el('td', { class: 'mono' }, d.name), el('td', { class: 'num' }, bytes(d.size)),
        el('td', { class: 'num' }, bytes(d.block_size)), el('td', { class: 'num' }, d.blocks),
        el('td', { class: 'num' }, d.holes), el('td', { class: 'mono small' }, d.index_blake3.slice(0, 16) + '…'))),
      { id: 'disks' }),
    el('h2', {}, 'Skipped bytes by reason'),
    table(['Reason', 'Bytes'], reasons.map(r => el('tr', { 'data-reason': r },
      el('td', {}, r), el('td', { class: 'num' }, bytes(skipped[r] || 0)))), { id: 'skipped' }));
  // Guest file systems.
  sec.appendChild(el('h2', {}, 'Guest files'));
  if (m.file_indexes && m.file_indexes.length) {
    sec.appendChild(el('ul', { id: 'filesystems' }, m.file_indexes.map(f => el('li', {},
      link('#/files/' + encodeURIComponent(m.id) + '?' + q({ disk: f.disk, partition: f.partition, path: '/' }),
        `disk ${f.disk}, partition ${f.partition}`, { class: 'fs-link' }),
      ` — ${f.files} entries`))));
  } else {
    sec.appendChild(el('p', { class: 'muted' }, 'No guest file index in this backup.'));
  }
  // Verify state: verify works on chunks, shared by backups; the console shows its last run.
  const lv = lastVerify();
  sec.appendChild(el('h2', {}, 'Verify'));
  sec.appendChild(el('p', { id: 'verify-state' }, lv
    ? `Last verify started from this console: job ${lv.id}, ${lv.state}` + (lv.result ? `, ${JSON.stringify(lv.result)}` : '')
    : 'No verify started from this console in this session (Jobs starts one; it checks every stored chunk this backup shares).'));
  // Retention and immutability.
  sec.appendChild(el('h2', {}, 'Retention'));
  if (retention) {
    const created = Date.parse(m.created);
    const until = created + retention.min_age_seconds * 1000;
    const own = retention.sources[m.source];
    const policy = own ? own.policy : retention.default;
    const reasons2 = [];
    if (retention.min_age_seconds > 0 && Date.now() < until) {
      reasons2.push(`Immutable until ${when(new Date(until).toISOString().slice(0, 19) + 'Z')}: the repository's immutability window is ${retention.min_age_seconds} s; nobody, admins included, may delete it before.`);
    }
    sec.appendChild(el('dl', { class: 'facts', id: 'retention' },
      el('dt', {}, 'Immutability window'), el('dd', {}, retention.min_age_seconds + ' s'),
      el('dt', {}, 'Policy'), el('dd', {}, policy ? Object.entries(policy).filter(([, v]) => v).map(([k, v]) => k + '=' + v).join(', ') || 'none (opted out)' : 'none: never pruned'),
      el('dt', {}, 'Policy from'), el('dd', {}, own ? own.origin : (retention.default ? 'default' : '–')),
      el('dt', {}, 'Deletable now'), el('dd', { id: 'deletable' }, reasons2.length ? 'no' : 'yes (unless it is the base of an open session)')));
    for (const r of reasons2) sec.appendChild(el('p', { class: 'note', id: 'immutable-reason' }, r));
  } else {
    sec.appendChild(el('p', { class: 'muted' }, 'Retention settings are shown to admins.'));
  }
  main.replaceChildren(sec);
}

function crumbsFor(id, disk, partition, path) {
  const parts = path.split('/').filter(Boolean);
  const out = [link('#/backup/' + encodeURIComponent(id), id), ' › ',
    link('#/files/' + encodeURIComponent(id) + '?' + q({ disk, partition, path: '/' }), disk + ':' + partition + ' /')];
  let at = '';
  for (const p of parts) {
    at += '/' + p;
    out.push(' › ', link('#/files/' + encodeURIComponent(id) + '?' + q({ disk, partition, path: at }), p));
  }
  return out;
}

/** A directory of a backup's guest file system. */
export async function files(main, me, id, params) {
  const path = params.get('path') || '/';
  const disk = params.get('disk') || '';
  const partition = params.get('partition') || '';
  const v = await api('/v1/backups/' + encodeURIComponent(id) + '/files?' + q({ path, disk, partition, depth: 1 }));
  const entries = v.entries.filter(e => e.path !== v.path);
  entries.sort((a, b) => (a.kind === 'dir') === (b.kind === 'dir') ? a.name.localeCompare(b.name) : (a.kind === 'dir' ? -1 : 1));
  const up = v.path === '/' ? null : v.path.replace(/\/[^/]+$/, '') || '/';
  main.replaceChildren(
    el('p', { class: 'crumbs' }, crumbsFor(v.backup, v.disk, v.partition, v.path)),
    el('h1', {}, 'Files ', el('span', { class: 'mono', id: 'dir-path' }, v.path)),
    table(['Name', 'Kind', 'Size', 'Mode', 'Owner', 'Modified', ''],
      [up ? el('tr', {}, el('td', {}, link('#/files/' + encodeURIComponent(id) + '?' + q({ disk: v.disk, partition: v.partition, path: up }), '..', { class: 'entry', 'data-name': '..' })), el('td', {}, 'dir')) : null]
        .concat(entries.map(e => el('tr', { class: 'file-row', 'data-kind': e.kind },
          el('td', { class: 'mono' }, link(e.kind === 'dir'
            ? '#/files/' + encodeURIComponent(id) + '?' + q({ disk: v.disk, partition: v.partition, path: e.path })
            : '#/file/' + encodeURIComponent(id) + '?' + q({ disk: v.disk, partition: v.partition, path: e.path }),
          e.name + (e.kind === 'dir' ? '/' : ''), { class: 'entry', 'data-name': e.name })),
          el('td', {}, e.kind), el('td', { class: 'num' }, e.kind === 'file' ? bytes(e.size) : ''),
          el('td', { class: 'mono' }, e.mode), el('td', {}, e.uid + ':' + e.gid), el('td', {}, when(e.mtime)),
          el('td', {}, e.excluded ? el('span', { class: 'tag excl' }, 'excluded') : '')))),
      { id: 'listing' }),
    v.truncated ? el('p', { class: 'note' }, 'More entries than shown.') : null);
}

/** One guest file: its details and a download through files/content with Range. */
export async function file(main, me, id, params) {
  const path = params.get('path') || '/';
  const disk = params.get('disk') || '';
  const partition = params.get('partition') || '';
  const sel = q({ path, disk, partition });
  const v = await api('/v1/backups/' + encodeURIComponent(id) + '/files?' + sel + '&depth=0');
  const e = v.entries[0];
  if (!e) throw new ApiError(404, 'NOT_FOUND', 'no entry ' + path);
  const status = el('p', { id: 'download-status', class: 'muted' }, '');
  const button = el('button', { id: 'download', type: 'button', disabled: e.kind !== 'file' || e.excluded }, 'Download');
  button.addEventListener('click', async () => {
    button.disabled = true;
    status.textContent = 'downloading…';
    try {
      const blob = await download('/v1/backups/' + encodeURIComponent(id) + '/files/content?' + sel, e.size,
        (done, total) => { status.textContent = `downloading ${bytes(done)} of ${bytes(total)}`; });
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: e.name, hidden: true });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      status.textContent = `downloaded ${blob.size} bytes`;
      status.setAttribute('data-done', String(blob.size));
    } catch (err) {
      status.textContent = 'download failed: ' + err.message;
      throw err;
    } finally {
      button.disabled = false;
    }
  });
  main.replaceChildren(
    el('p', { class: 'crumbs' }, crumbsFor(v.backup, v.disk, v.partition, e.path)),
    el('h1', {}, el('span', { class: 'mono', id: 'file-name' }, e.name)),
    el('dl', { class: 'facts', id: 'file-details' },
      el('dt', {}, 'Path'), el('dd', { class: 'mono' }, e.path),
      el('dt', {}, 'Kind'), el('dd', {}, e.kind),
      el('dt', {}, 'Size'), el('dd', { id: 'file-size', 'data-bytes': e.size }, bytes(e.size) + ' (' + e.size + ' bytes)'),
      el('dt', {}, 'Mode'), el('dd', { class: 'mono' }, e.mode),
      el('dt', {}, 'Owner'), el('dd', {}, e.uid + ':' + e.gid),
      el('dt', {}, 'Modified'), el('dd', {}, when(e.mtime)),
      el('dt', {}, 'Backed up'), el('dd', {}, e.excluded ? 'no: matched an exclude' : 'yes')),
    button, status);
}

/** Search across backups with the API's filters, paged. */
export async function search(main, me, params) {
  const f = {
    name: params.get('name') || '', path: params.get('path') || '', source: params.get('source') || '',
    since: params.get('since') || '', until: params.get('until') || '', limit: params.get('limit') || '50',
    after: params.get('after') || '', tenant: params.get('tenant') || '',
  };
  const input = (k, label, attrs) => el('label', {}, label, el('input', Object.assign({ id: 'q-' + k, name: k, value: f[k] }, attrs || {})));
  const form = el('form', { id: 'search-form', class: 'filters' },
    input('name', 'Name (glob)', { placeholder: 'nginx.conf or *.log' }),
    input('path', 'Under directory', { placeholder: '/etc' }),
    input('source', 'Source'),
    input('since', 'Since', { placeholder: '2026-11-25T00:00:00Z' }),
    input('until', 'Until'),
    input('limit', 'Per page', { type: 'number', min: 1, max: 1000 }),
    me.role === 'admin' ? input('tenant', 'Tenant', { placeholder: me.tenant }) : null,
    el('button', { type: 'submit', id: 'search-go' }, 'Search'));
  form.addEventListener('submit', ev => {
    ev.preventDefault();
    const n = {};
    for (const k of ['name', 'path', 'source', 'since', 'until', 'limit', 'tenant']) {
      if (form.elements[k]) n[k] = form.elements[k].value.trim();
    }
    location.hash = '#/search?' + q(n);
  });
  main.replaceChildren(el('h1', {}, 'Search files'), form);
  if (!f.name && !f.path && !f.source) {
    main.appendChild(el('p', { class: 'muted' }, 'Give a name, a directory or a source.'));
    return;
  }
  const r = await api('/v1/search?' + q(f));
  const first = Number(f.after || 0);
  const last = first + r.results.length;
  const page = (after) => '#/search?' + q(Object.assign({}, f, { after }));
  main.appendChild(el('p', { id: 'search-summary', 'data-total': r.total, 'data-first': r.results.length ? first + 1 : 0, 'data-last': last },
    r.results.length ? `Results ${first + 1}–${last} of ${r.total}` : `No results (${r.total})`,
    r.truncated ? ' (the scan stopped at its limit; there may be more)' : ''));
  main.appendChild(table(['File', 'Size', 'Modified', 'Source', 'Backup', 'Backed up'],
    r.results.map(h => el('tr', { class: 'hit', 'data-backup': h.backup, 'data-path': h.path },
      el('td', { class: 'mono' }, link('#/file/' + encodeURIComponent(h.backup) + '?' + q({ disk: h.disk, partition: h.partition, path: h.path }), h.path)),
      el('td', { class: 'num' }, bytes(h.size)), el('td', {}, when(h.mtime)), el('td', {}, h.source),
      el('td', { class: 'mono' }, link('#/backup/' + encodeURIComponent(h.backup), h.backup)), el('td', {}, when(h.created)))),
    { id: 'hits' }));
  const limit = Number(f.limit) || 50;
  main.appendChild(el('p', { class: 'pager' },
    first > 0 ? link(page(Math.max(0, first - limit) || ''), '‹ Previous', { id: 'prev-page', class: 'button' }) : null,
    r.next !== null && r.next !== undefined ? link(page(r.next), 'Next ›', { id: 'next-page', class: 'button' }) : null));
}

const JOBS_KEY = 'backup-console-jobs';

function myJobs() {
  try { return JSON.parse(sessionStorage.getItem(JOBS_KEY) || '[]'); } catch (_) { return []; }
}

function remember(id) {
  const j = myJobs().filter(x => x !== id);
  j.unshift(id);
  sessionStorage.setItem(JOBS_KEY, JSON.stringify(j.slice(0, 20)));
}

function pruneTable(report) {
  return table(['Tenant', 'Source', 'Policy', 'Kept', report.dry_run ? 'Would prune' : 'Pruned', 'Not deletable yet'],
    report.sources.map(s => el('tr', { class: 'prune-row', 'data-source': s.source },
      el('td', {}, s.tenant), el('td', {}, s.source),
      el('td', {}, s.policy ? Object.entries(s.policy).filter(([, v]) => v).map(([k, v]) => k + '=' + v).join(', ') : 'none'),
      el('td', { class: 'num' }, s.kept.length),
      el('td', { class: 'mono small' }, s.pruned.join(' ') || '–'),
      el('td', { class: 'small' }, s.skipped.map(k => k.id + ': ' + k.message).join('; ') || '–'))),
    { id: 'prune-report' });
}

/** Jobs: GC, verify and prune (dry run first), and the progress of those started here. */
export async function jobs(main, me, _params, report) {
  if (me.role !== 'admin') {
    main.replaceChildren(el('h1', {}, 'Jobs'), el('p', { class: 'muted' }, 'Jobs are for admins.'));
    return;
  }
  const list = el('div', { id: 'jobs' });
  const fraction = el('input', { id: 'verify-fraction', type: 'number', min: '0', max: '1', step: 'any', placeholder: 'all' });
  const start = async (path, body) => {
    const r = await api(path, { method: 'POST', body });
    remember(r.job);
    await refresh();
  };
  const gc = el('button', { id: 'start-gc', type: 'button' }, 'Start GC');
  gc.addEventListener('click', () => start('/v1/admin/gc').catch(report));
  const verify = el('button', { id: 'start-verify', type: 'button' }, 'Start verify');
  verify.addEventListener('click', () => {
    const v = fraction.value.trim();
    start('/v1/admin/verify', v ? { fraction: Number(v) } : {}).catch(report);
  });
  const pruneOut = el('div', { id: 'prune-out' });
  const dry = el('button', { id: 'prune-dry', type: 'button' }, 'Prune: dry run');
  const apply = el('button', { id: 'prune-apply', type: 'button', class: 'danger', hidden: true }, 'Prune now');
  dry.addEventListener('click', async () => {
    try {
      const r = await api('/v1/admin/prune', { method: 'POST', body: { dry_run: true } });
      pruneOut.replaceChildren(el('h3', {}, 'Dry run: nothing deleted'), pruneTable(r));
      apply.hidden = false;
    } catch (e) { report(e); }
  });
  apply.addEventListener('click', async () => {
    try {
      const r = await api('/v1/admin/prune', { method: 'POST', body: { dry_run: false } });
      pruneOut.replaceChildren(el('h3', {}, 'Pruned (the next GC frees their chunks)'), pruneTable(r));
      apply.hidden = true;
    } catch (e) { report(e); }
  });
  main.replaceChildren(el('h1', {}, 'Jobs'),
    el('section', { class: 'actions' },
      el('div', {}, gc, el('span', { class: 'muted' }, ' frees chunks no backup refers to')),
      el('div', {}, el('label', {}, 'Verify fraction ', fraction), ' ', verify),
      el('div', {}, dry, ' ', apply)),
    pruneOut, el('h2', {}, 'Jobs started in this session'), list);
  let timer = null;
  async function refresh() {
    const ids = myJobs();
    if (ids.length === 0) {
      list.replaceChildren(el('p', { class: 'muted' }, 'None yet.'));
      return;
    }
    const rows = [];
    let running = false;
    let seenVerify = false;
    for (const id of ids) {
      let j;
      try { j = await api('/v1/admin/jobs/' + encodeURIComponent(id)); } catch (e) { if (e instanceof ApiError && e.status === 404) continue; throw e; }
      if (j.state === 'running') running = true;
      if (j.kind === 'verify' && !seenVerify) {
        seenVerify = true;
        sessionStorage.setItem('backup-console-last-verify', JSON.stringify({ id: j.id, state: j.state, result: j.result || null }));
      }
      const p = j.progress || { phase: '', done: 0, total: 0 };
      rows.push(el('tr', { class: 'job', 'data-id': j.id, 'data-kind': j.kind, 'data-state': j.state },
        el('td', { class: 'mono' }, j.id), el('td', {}, j.kind),
        el('td', { class: 'state' }, j.state),
        el('td', {}, el('progress', { max: p.total || 1, value: j.state === 'running' ? p.done : (p.total || 1) }), ' ', p.phase, ' ', p.done + '/' + p.total),
        el('td', {}, when(j.started)), el('td', {}, when(j.finished)),
        el('td', {}, el('pre', { class: 'result' }, j.error ? 'error: ' + j.error : (j.result ? JSON.stringify(j.result, null, 1) : '')))));
    }
    list.replaceChildren(table(['Job', 'Kind', 'State', 'Progress', 'Started', 'Finished', 'Result'], rows, { id: 'job-table' }));
    clearTimeout(timer);
    // Poll while a job runs and the page is shown (on the first round it is still being built).
    if (running && (first || list.isConnected)) timer = setTimeout(() => refresh().catch(report), 500);
  }
  let first = true;
  await refresh();
  first = false;
}
