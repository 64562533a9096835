// The Receipts page: every receipt kept in this browser for the selected account, with its
// verdict. A distrusted provider can be trusted again here after the user has looked into it.

import { el, fill, sortableTable } from './dom.js';
import { formatUnits, short } from './format.js';

export function receiptsPage(app) {
  const { chain, store } = app;
  const summary = el('div', { id: 'receipts-summary', className: 'status' });
  const table = sortableTable([
    { key: 'provider', label: 'Provider', render: (r) => el('span', { title: r.provider }, short(r.provider)) },
    { key: 'nonce', label: 'Nonce', sort: (r) => Number(r.nonce ?? -1) },
    { key: 'kind', label: 'Kind' },
    { key: 'tokens', label: 'Tokens in/out', render: (r) => (r.inputTokens == null ? '' : `${r.inputTokens} / ${r.outputTokens}`) },
    { key: 'fee', label: 'Fee', sort: (r) => BigInt(r.fee ?? 0), render: (r) => (r.fee == null ? '' : formatUnits(BigInt(r.fee))) },
    { key: 'total', label: 'Total', sort: (r) => BigInt(r.total ?? 0), render: (r) => (r.total == null ? '' : formatUnits(BigInt(r.total))) },
    { key: 'ok', label: 'Verdict', text: (r) => (r.ok ? 'verified' : `rejected ${r.reason}`), render: (r) => el('span', { className: r.ok ? 'receipt-ok' : 'receipt-bad' }, r.ok ? 'verified' : `REJECTED: ${r.reason}`) },
    { key: 'at', label: 'When', render: (r) => new Date(r.at).toLocaleTimeString() },
  ], { filterPlaceholder: 'filter receipts', id: 'receipts-table' });

  function draw() {
    const a = app.account;
    if (!a || !chain.genesis) return fill(summary, 'choose an account');
    const pairs = store.pairs().filter((p) => p.genesis === chain.genesis && p.user === a.address);
    const rows = [];
    const lines = [];
    for (const p of pairs) {
      const st = store.load(p.genesis, p.user, p.provider);
      st.receipts.forEach((r) => rows.push({ ...r, provider: p.provider }));
      lines.push(el('div', {}, `${short(p.provider)}: nonce ${st.nonce}, verified total ${formatUnits(st.total)} unit`,
        st.distrusted ? el('span', { className: 'receipt-bad' }, ` — distrusted: ${st.distrusted} `) : '',
        st.distrusted ? el('button', { className: 'small', onclick: () => { st.distrusted = null; store.save(p.genesis, p.user, p.provider, st); draw(); } }, 'trust again') : ''));
    }
    fill(summary, lines.length ? lines : 'no receipts kept for this account');
    table.set(rows);
  }
  app.addEventListener('account', draw);
  app.addEventListener('receipts', draw);
  draw();
  return el('section', { id: 'page-receipts' },
    el('h2', {}, 'Receipts'),
    el('p', { className: 'muted' }, 'Kept in this browser (local storage, the last 50 per provider), each checked on arrival: signature, fee at the on-chain prices, running total, response hash, activation proof.'),
    summary,
    table.node);
}
