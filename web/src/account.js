// The Account page: pick an account (extension, or dev accounts on a dev chain), see its free
// balance and its escrow with every provider (live: storage subscriptions), deposit, request a
// refund, cancel it, and withdraw it once unlocked. Each action is a signed extrinsic whose
// progress is shown to finality, with the pallet's own error text when it fails.

import { el, fill, sortableTable } from './dom.js';
import { formatUnits, parseUnits, short } from './format.js';
import { devAccounts, extensionAccounts, submit } from './signers.js';
import { Chain } from './chain.js';

export function accountPage(app) {
  const { chain } = app;
  const picker = el('select', { id: 'account-select', onchange: () => app.selectAccount(picker.value) });
  const connectExt = el('button', { id: 'connect-extension', onclick: connectExtension }, 'Connect extension');
  const info = el('div', { id: 'account-info', className: 'muted' }, 'no account selected');
  const status = el('div', { id: 'tx-status', className: 'status', attrs: { role: 'status' } });
  const providerSel = el('select', { id: 'deposit-provider' });
  const amount = el('input', { id: 'deposit-amount', value: '0.5', size: 8, inputMode: 'decimal' });
  const depositBtn = el('button', { id: 'deposit-button', onclick: () => act('deposit') }, 'Deposit');
  let escrowRows = [];
  const refundInputs = new Map(); // provider -> refund amount typed
  let escrowUnsub = null;
  let balanceUnsub = null;

  const table = sortableTable([
    { key: 'provider', label: 'Provider', render: (r) => el('span', { title: r.provider }, short(r.provider)) },
    { key: 'balance', label: 'Balance', render: (r) => formatUnits(r.balance) },
    { key: 'pendingRefund', label: 'Pending refund', render: (r) => formatUnits(r.pendingRefund) },
    { key: 'unlockAt', label: 'Unlocks at', render: unlockText, text: unlockText },
    { key: 'settledNonce', label: 'Settled nonce', render: (r) => r.settledNonce.toString() },
    { key: 'settledTotal', label: 'Settled total', render: (r) => formatUnits(r.settledTotal) },
    { key: 'held', label: 'Held (dispute window)', render: (r) => formatUnits(r.held) },
    { key: 'actions', label: 'Refund', render: actions },
  ], { filterPlaceholder: 'filter escrows', id: 'escrow-table' });

  function unlockText(r) {
    if (r.pendingRefund === 0n) return '—';
    const left = r.unlockAt - (chain.best ?? 0);
    return left > 0 ? `#${r.unlockAt} (in ${left} blocks)` : `#${r.unlockAt} (unlocked)`;
  }

  function actions(r) {
    // The table is redrawn with every block (unlock countdowns): keep what the user typed.
    const refundAmount = el('input', {
      size: 6, value: refundInputs.get(r.provider) ?? '0.1', className: 'refund-amount', inputMode: 'decimal',
      oninput: () => refundInputs.set(r.provider, refundAmount.value),
    });
    const unlocked = r.pendingRefund > 0n && (chain.best ?? 0) >= r.unlockAt;
    return el('span', { className: 'actions', dataset: { provider: r.provider } },
      refundAmount,
      el('button', { className: 'refund-request', onclick: () => act('requestRefund', r.provider, refundAmount.value) }, 'Request'),
      el('button', { className: 'refund-cancel', disabled: r.pendingRefund === 0n, onclick: () => act('cancelRefund', r.provider) }, 'Cancel'),
      el('button', { className: 'refund-withdraw', disabled: !unlocked, onclick: () => act('withdrawRefund', r.provider) }, 'Withdraw'));
  }

  async function connectExtension() {
    try {
      const found = await extensionAccounts();
      app.addAccounts(found);
      setStatus(`${found.length} account(s) from the extension`, 'ok');
    } catch (e) {
      setStatus(e.message, 'error');
    }
  }

  function setStatus(text, kind = '') {
    status.className = `status ${kind}`;
    fill(status, text);
  }

  async function act(what, provider, amountText) {
    const account = app.account;
    if (!account) return setStatus('choose an account first', 'error');
    let tx;
    try {
      if (what === 'deposit') {
        tx = chain.api.tx.compute.deposit(providerSel.value, parseUnits(amount.value));
      } else if (what === 'requestRefund') {
        tx = chain.api.tx.compute.requestRefund(provider, parseUnits(amountText));
      } else {
        tx = chain.api.tx.compute[what](provider);
      }
    } catch (e) {
      return setStatus(e.message, 'error');
    }
    const label = { deposit: 'Deposit', requestRefund: 'Refund request', cancelRefund: 'Cancel refund', withdrawRefund: 'Withdraw refund' }[what];
    setStatus(`${label}: signing…`, 'pending');
    try {
      const { events } = await submit(chain, tx, account, (s) => setStatus(`${label}: ${s}`, 'pending'));
      setStatus(`${label}: finalized (${events.join(', ') || 'no event'})`, 'ok');
    } catch (e) {
      setStatus(`${label} failed: ${e.message}`, 'error');
    }
  }

  /** Re-subscribe the selected account's balance and its escrows with every known provider.
   * Called again on each account or service change; a newer call supersedes an older one
   * still waiting for its subscriptions (`generation`). */
  let generation = 0;
  async function watch() {
    const gen = ++generation;
    escrowUnsub?.();
    balanceUnsub?.();
    escrowUnsub = balanceUnsub = null;
    const account = app.account;
    if (!account) return;
    const providers = [...new Set([...chain.services.values()].map((s) => s.provider))]
      .filter((p) => p !== account.address);
    const chosen = providerSel.value;
    fill(providerSel, providers.map((p) => el('option', { value: p, selected: p === chosen }, `${short(p)} ${providerName(p)}`)));
    const balance = chain.api.query.system.account(account.address, (a) => {
      if (gen !== generation) return;
      fill(info, `${account.name} `, el('code', {}, account.address),
        ` — free ${formatUnits(a.data.free.toBigInt())} unit, reserved/held ${formatUnits(a.data.reserved.toBigInt())}`);
    });
    // One subscription per escrow. Escrow records are never removed on chain, so a "none" after
    // a value is polkadot.js's expired cache, not news (see Chain.subscribeProviders).
    const found = new Map();
    const redraw = () => {
      if (gen !== generation) return;
      escrowRows = providers.filter((p) => found.has(p)).map((p) => found.get(p));
      app.escrows = new Map(escrowRows.map((r) => [r.provider, r]));
      table.set(escrowRows);
      app.dispatchEvent(new CustomEvent('escrows'));
    };
    const escrows = Promise.all(providers.map((p) =>
      chain.api.query.compute.escrows(account.address, p, (e) => {
        if (e.isSome) found.set(p, { provider: p, ...Chain.plainEscrow(e.unwrap()) });
        else if (found.has(p)) return;
        redraw();
      })));
    const [b, unsubs] = await Promise.all([balance, escrows]);
    const stop = () => { b(); unsubs.forEach((u) => u()); };
    if (gen !== generation) return stop();
    balanceUnsub = b;
    escrowUnsub = () => unsubs.forEach((u) => u());
  }

  const providerName = (p) => [...chain.services.values()].filter((s) => s.provider === p).map((s) => s.model).join(', ');

  function drawPicker() {
    fill(picker, el('option', { value: '' }, '— choose an account —'),
      app.accounts.map((a) => el('option', { value: a.address, selected: a === app.account }, `${a.name} ${short(a.address)}`)));
  }

  app.addEventListener('accounts', drawPicker);
  app.addEventListener('account', () => { drawPicker(); watch(); });
  chain.addEventListener('services', () => watch());
  // Unlock countdowns move with the chain: redraw only when one changed (a redraw replaces the
  // inputs, so it must not happen under the user's fingers without need).
  let countdowns = '';
  chain.addEventListener('head', () => {
    const now = escrowRows.map(unlockText).join();
    if (now !== countdowns) table.set(escrowRows);
    countdowns = now;
  });

  if (chain.isDev) devAccounts().then((list) => app.addAccounts(list));

  return el('section', { id: 'page-account' },
    el('h2', {}, 'Account'),
    el('div', { className: 'row' }, picker, connectExt),
    info,
    el('h3', {}, 'Deposit into escrow'),
    el('div', { className: 'row' }, 'Provider ', providerSel, ' amount (unit) ', amount, depositBtn),
    status,
    el('h3', {}, 'Escrows'),
    table.node);
}
