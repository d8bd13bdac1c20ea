// The console's entry: sign-in, the hash router, and error display. Pages are in views.js.

import { api, token, setToken, ApiError } from './api.js';
import * as views from './views.js';

const main = document.getElementById('main');
const errorBox = document.getElementById('error');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signout = document.getElementById('signout');
let me = null;
let generation = 0;

/** Shows an error: the API's message and code, as the API gave them. */
function report(e) {
  const text = e instanceof ApiError ? `${e.message} (${e.code})` : String(e && e.message ? e.message : e);
  errorBox.textContent = text;
  errorBox.hidden = false;
  errorBox.setAttribute('data-code', e instanceof ApiError ? e.code : 'CLIENT');
}

function clearError() {
  errorBox.hidden = true;
  errorBox.textContent = '';
  errorBox.removeAttribute('data-code');
}

function signInPage() {
  generation++;
  main.setAttribute('aria-busy', 'false');
  nav.hidden = true;
  signout.hidden = true;
  who.textContent = '';
  const input = views.el('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, placeholder: 'bearer token' });
  const form = views.el('form', { id: 'signin-form', class: 'signin' },
    views.el('h1', {}, 'Sign in'),
    views.el('p', { class: 'muted' }, 'With an API token of this repository. It is kept in this tab only (sessionStorage) and sent as a bearer header.'),
    views.el('label', {}, 'Token ', input),
    views.el('button', { type: 'submit', id: 'signin' }, 'Sign in'));
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    clearError();
    setToken(input.value.trim());
    try {
      me = await api('/v1/whoami');
      await render();
    } catch (e) {
      setToken(null);
      me = null;
      report(e);
    }
  });
  main.replaceChildren(form);
  input.focus();
}

async function render() {
  clearError();
  if (!token()) return signInPage();
  try {
    if (!me) me = await api('/v1/whoami');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) setToken(null);
    signInPage();
    return report(e);
  }
  nav.hidden = false;
  signout.hidden = false;
  document.body.classList.toggle('admin', me.role === 'admin');
  who.textContent = `${me.tenant} · ${me.role}`;
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.getAttribute('href') === '#/' + (parts[0] || ''));
  // Each page is built off-screen and shown only if no later navigation started meanwhile.
  const mine = ++generation;
  const page = document.createElement('div');
  main.setAttribute('aria-busy', 'true');
  try {
    switch (parts[0] || '') {
      case '': await views.overview(page, me); break;
      case 'source': await views.source(page, me, parts[1], params); break;
      case 'backup': await views.backup(page, me, parts[1]); break;
      case 'files': await views.files(page, me, parts[1], params); break;
      case 'file': await views.file(page, me, parts[1], params); break;
      case 'search': await views.search(page, me, params); break;
      case 'jobs': await views.jobs(page, me, params, report); break;
      default: page.replaceChildren(views.el('p', {}, 'No such page.'));
    }
    if (mine === generation) main.replaceChildren(page);
  } catch (e) {
    if (mine === generation) {
      main.replaceChildren(page);
      report(e);
    }
  } finally {
    if (mine === generation) main.setAttribute('aria-busy', 'false');
  }
}

signout.addEventListener('click', () => {
  setToken(null);
  me = null;
  sessionStorage.clear();
  location.hash = '#/';
  signInPage();
});
window.addEventListener('hashchange', () => { render(); });
window.addEventListener('unhandledrejection', ev => report(ev.reason));
render();
