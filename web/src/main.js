// Boot: connect to the node (URL from `?node=`, else the server's config.json, else the local
// default), build the four pages, and switch between them with the URL's hash.

import { el, fill, $ } from './dom.js';
import { Chain } from './chain.js';
import { ReceiptStore } from './receipts.js';
import { explorerPage } from './explorer.js';
import { accountPage } from './account.js';
import { chatPage } from './chat.js';
import { receiptsPage } from './receiptsPage.js';

const PAGES = ['explorer', 'account', 'chat', 'receipts'];

/** Shared state of the pages: the chain, the receipt store, the accounts and the chosen one. */
class App extends EventTarget {
  constructor(chain) {
    super();
    this.chain = chain;
    this.store = new ReceiptStore();
    this.accounts = [];
    this.account = null;
    this.escrows = new Map();
  }

  addAccounts(list) {
    const known = new Set(this.accounts.map((a) => `${a.source}:${a.address}`));
    this.accounts.push(...list.filter((a) => !known.has(`${a.source}:${a.address}`)));
    this.dispatchEvent(new CustomEvent('accounts'));
  }

  selectAccount(address) {
    this.account = this.accounts.find((a) => a.address === address) ?? null;
    this.escrows = new Map();
    this.dispatchEvent(new CustomEvent('account'));
  }
}

async function nodeUrl() {
  let configured = 'ws://127.0.0.1:9944';
  try {
    const c = await (await fetch('config.json', { cache: 'no-store' })).json();
    if (typeof c.nodeUrl === 'string') configured = c.nodeUrl;
  } catch { /* no config: the default */ }
  // The node decides what the page asks you to sign (its metadata maps calls to bytes), so a
  // node named by a link is used only when the user says so: a link to a hostile node could
  // otherwise dress a transfer up as a deposit.
  const q = new URLSearchParams(location.search).get('node');
  if (q && q !== configured && window.confirm(
    `This link asks to use the node ${q} instead of ${configured}. The node tells this page `
    + 'what you sign: connect only to a node you trust. Use it?')) return q;
  return configured;
}

function show(page) {
  const name = PAGES.includes(page) ? page : 'explorer';
  for (const p of PAGES) {
    $(`#page-${p}`)?.classList.toggle('hidden', p !== name);
    $(`#tab-${p}`)?.classList.toggle('active', p === name);
  }
}

async function boot() {
  const main = $('#main');
  const conn = $('#connection');
  const url = await nodeUrl();
  fill(conn, `connecting to ${url}…`);
  const chain = new Chain();
  try {
    await chain.connect(url);
  } catch (e) {
    fill(conn, el('span', { className: 'error' }, `cannot connect: ${e.message}`));
    return;
  }
  fill(conn, el('span', { className: 'ok' }, `connected to ${url}`));
  chain.addEventListener('connection', (e) => fill(conn, el('span', { className: e.detail === 'connected' ? 'ok' : 'error' }, `${e.detail}: ${url}`)));
  const app = new App(chain);
  window.computeApp = app; // for the browser test and the console
  fill(main, explorerPage(app), accountPage(app), chatPage(app), receiptsPage(app));
  show(location.hash.slice(1));
  performance.mark('app-ready');
  document.body.dataset.ready = 'true';
}

window.addEventListener('hashchange', () => show(location.hash.slice(1)));
boot();
