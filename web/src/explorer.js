// The Explorer page: chain status, every service with its prices and endpoint health, provider
// statistics, and recent settlements and disputes. All tables sort and filter; all figures are
// pushed by subscriptions (see chain.js). Endpoints are untrusted strings from the chain: shown
// as text, fetched only when they are http(s) URLs, and a worker whose /health names another
// provider or chain than the one on chain is flagged.

import { el, fill, sortableTable } from './dom.js';
import { formatUnits, perMillion, short } from './format.js';

const HEALTH_TIMEOUT_MS = 5000;

/** The base URL of a service endpoint, or null when it is not http(s). */
export function endpointBase(url) {
  try {
    const u = new URL(url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
    // Anything beyond scheme, host and path would reach the endpoint from every visitor's
    // browser as the registrant chose it (a query against a router on the visitor's network).
    if (u.search || u.hash || u.username || u.password) return null;
    return u.href.replace(/\/+$/, '');
  } catch {
    return null;
  }
}

export function explorerPage(app) {
  const { chain } = app;
  const health = new Map(); // url -> {state, detail, ms}
  const status = el('div', { id: 'chain-status', className: 'status-grid' });

  const addr = (a) => el('span', { title: a }, short(a));
  const services = sortableTable([
    { key: 'provider', label: 'Provider', render: (s) => addr(s.provider) },
    { key: 'serviceId', label: 'Id' },
    { key: 'kind', label: 'Kind' },
    { key: 'model', label: 'Model', className: 'model' },
    { key: 'modelHash', label: 'Model hash', render: (s) => (/^0x0+$/.test(s.modelHash) ? '—' : addr(s.modelHash)) },
    { key: 'inputPrice', label: 'Input / M tokens', render: (s) => perMillion(s.inputPrice) },
    { key: 'outputPrice', label: 'Output / M tokens', render: (s) => perMillion(s.outputPrice) },
    { key: 'verifiability', label: 'Verifiability' },
    { key: 'url', label: 'Endpoint', className: 'url' },
    {
      key: 'health', label: 'Health',
      sort: (s) => health.get(s.url)?.state ?? '',
      text: (s) => health.get(s.url)?.state ?? '',
      render: (s) => {
        const h = health.get(s.url) ?? { state: 'checking' };
        return el('span', { className: `health ${h.state}`, title: h.detail ?? '' },
          h.ms != null ? `${h.state} (${h.ms} ms)` : h.state);
      },
    },
  ], { filterPlaceholder: 'filter services (model, kind, provider…)', id: 'services-table' });

  const providers = sortableTable([
    { key: 'provider', label: 'Provider', render: (p) => addr(p.provider) },
    { key: 'bond', label: 'Bond', render: (p) => formatUnits(p.bond) },
    { key: 'services', label: 'Services' },
    { key: 'requestsSettled', label: 'Requests settled', render: (p) => p.requestsSettled.toString() },
    { key: 'claimsSettled', label: 'Claims settled', render: (p) => p.claimsSettled.toString() },
    { key: 'earned', label: 'Earned', render: (p) => formatUnits(p.earned) },
    { key: 'disputesLost', label: 'Disputes lost', render: (p) => p.disputesLost.toString() },
    { key: 'lastSettledAt', label: 'Last settled', render: (p) => (p.lastSettledAt ? `#${p.lastSettledAt}` : '—') },
  ], { filterPlaceholder: 'filter providers', id: 'providers-table' });

  const amount = (v) => (v == null ? '' : /^\d+$/.test(v) ? formatUnits(BigInt(v)) : v);
  const settlements = sortableTable([
    { key: 'block', label: 'Block', render: (r) => `#${r.block}` },
    { key: 'name', label: 'Event' },
    { key: 'provider', label: 'Provider', render: (r) => addr(r.provider) },
    { key: 'user', label: 'User', render: (r) => (r.user ? addr(r.user) : '') },
    { key: 'nonce', label: 'Nonce' },
    { key: 'paid', label: 'Paid', render: (r) => amount(r.paid ?? r.amount) },
    { key: 'detail', label: 'Detail', text: detail, render: detail },
  ], { filterPlaceholder: 'filter settlements', id: 'settlements-table' });
  function detail(r) {
    if (r.name === 'BatchSettled') return `accepted ${r.accepted}, rejected ${r.rejected}`;
    if (r.name === 'ClaimRejected') return r.reason;
    if (r.name === 'ClaimPartiallySettled') return `owed ${amount(r.owed)}`;
    return '';
  }
  const disputes = sortableTable([
    { key: 'block', label: 'Block', render: (r) => `#${r.block}` },
    { key: 'name', label: 'Event' },
    { key: 'provider', label: 'Provider', render: (r) => addr(r.provider) },
    { key: 'user', label: 'User', render: (r) => (r.user ? addr(r.user) : '') },
    { key: 'nonce', label: 'Nonce' },
    { key: 'refunded', label: 'Refunded', render: (r) => amount(r.refunded) },
    { key: 'outcome', label: 'Outcome', render: (r) => r.outcome ?? '' },
  ], { filterPlaceholder: 'filter disputes', id: 'disputes-table' });

  function drawStatus() {
    fill(status,
      el('div', {}, el('b', {}, 'Chain '), chain.chainName, chain.isDev ? ' (development)' : ''),
      el('div', {}, el('b', {}, 'Node '), chain.url),
      el('div', { id: 'best-block' }, el('b', {}, 'Best '), chain.best == null ? '…' : `#${chain.best}`),
      el('div', { id: 'finalized-block' }, el('b', {}, 'Finalized '), chain.finalized == null ? '…' : `#${chain.finalized}`),
      el('div', {}, el('b', {}, 'Genesis '), el('span', { title: chain.genesis }, short(chain.genesis))),
      el('div', { id: 'validators' }, el('b', {}, `Validators (${chain.validators.length}) `),
        chain.validators.map((v) => el('code', { title: v }, short(v), ' '))));
  }

  /** Ask each endpoint's /health once when the service list changes (and on demand). */
  async function checkHealth(force = false) {
    const urls = [...new Set([...chain.services.values()].map((s) => s.url))];
    await Promise.all(urls.map(async (url) => {
      if (!force && health.has(url)) return;
      const base = endpointBase(url);
      if (!base) {
        health.set(url, { state: 'invalid', detail: 'not an http(s) URL' });
        return;
      }
      const owners = [...chain.services.values()].filter((s) => s.url === url).map((s) => s.provider);
      const t0 = performance.now();
      try {
        const r = await fetch(`${base}/health`, { signal: AbortSignal.timeout(HEALTH_TIMEOUT_MS) });
        const ms = Math.round(performance.now() - t0);
        const body = await r.json();
        if (!r.ok) health.set(url, { state: 'down', detail: `HTTP ${r.status}`, ms });
        else if (body.genesis && body.genesis !== chain.genesis) health.set(url, { state: 'wrong-chain', detail: `serves chain ${body.genesis}`, ms });
        else if (body.provider && !owners.includes(body.provider)) health.set(url, { state: 'wrong-provider', detail: `answers as ${body.provider}`, ms });
        else health.set(url, { state: 'up', detail: String(body.status ?? ''), ms });
      } catch (e) {
        health.set(url, { state: 'down', detail: e.message });
      }
      services.set([...chain.services.values()]);
    }));
  }

  chain.addEventListener('head', drawStatus);
  chain.addEventListener('services', () => {
    services.set([...chain.services.values()]);
    checkHealth();
    if (chain.services.size) performance.mark('services-listed');
  });
  chain.addEventListener('providers', () => providers.set([...chain.providers.values()]));
  chain.addEventListener('settlements', () => settlements.set(chain.settlements));
  chain.addEventListener('disputes', () => disputes.set(chain.disputes));
  drawStatus();
  services.set([...chain.services.values()]);
  providers.set([...chain.providers.values()]);
  settlements.set(chain.settlements);
  disputes.set(chain.disputes);
  checkHealth();
  if (chain.services.size) performance.mark('services-listed');

  return el('section', { id: 'page-explorer' },
    el('h2', {}, 'Explorer'),
    status,
    el('h3', {}, 'Services ', el('button', { onclick: () => checkHealth(true), className: 'small' }, 'recheck health')),
    services.node,
    el('h3', {}, 'Providers'),
    providers.node,
    el('h3', {}, 'Recent settlements'),
    settlements.node,
    el('h3', {}, 'Disputes and challenges'),
    disputes.node);
}
