// The web app in a real browser (Debian's Chromium, headless, driven by puppeteer-core) against
// a real dev node and a real compute-worker serving SmolLM2 (started by scripts/test-web.sh),
// plus a dishonest worker (fake-worker.mjs) registered on chain by //Dave.
//   NODE_WS   ws://127.0.0.1:9966        WEB_URL  http://127.0.0.1:5199/
//   FAKE_PORT 8098                       OUT_DIR  web/test-output (screenshots, metrics.json)
//   CHROMIUM  /usr/bin/chromium
// The steps run in order and share one page: each needs the one before.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import puppeteer from 'puppeteer-core';
import { ApiPromise, WsProvider, Keyring } from '@polkadot/api';
import { cryptoWaitReady } from '@polkadot/util-crypto';
import { startFakeWorker, MODES } from './fake-worker.mjs';

const NODE_WS = process.env.NODE_WS ?? 'ws://127.0.0.1:9966';
const WEB_URL = process.env.WEB_URL ?? 'http://127.0.0.1:5199/';
const FAKE_PORT = Number(process.env.FAKE_PORT ?? 8098);
const OUT = process.env.OUT_DIR ?? new URL('../test-output/', import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const UNIT = 10n ** 12n;
const FAKE_PRICES = { input: 1_000_000n, output: 4_000_000n };
// On-chain strings are untrusted: the fake service's name is markup that must stay text.
const FAKE_MODEL = 'Fake <img src=x onerror="window.__xss=1"> model';

let api; let browser; let page; let fake; let keyring;
const metrics = {};
const consoleErrors = [];
const short = (a) => `${a.slice(0, 6)}…${a.slice(-6)}`;

async function shot(name) {
  await page.screenshot({ path: `${OUT}/${name}.png`, fullPage: true });
}

/** Sign and wait for finality from Node (test setup only; the UI signs its own). */
function sendFinal(tx, pair) {
  return new Promise((resolve, reject) => {
    tx.signAndSend(pair, ({ status, dispatchError }) => {
      if (dispatchError) reject(new Error(dispatchError.toString()));
      else if (status.isFinalized) resolve();
    }).catch(reject);
  });
}

async function escrowOf(user, provider) {
  const e = await api.query.compute.escrows(user, provider);
  return e.isSome ? e.unwrap() : null;
}

/** Go to a page of the app by its hash. */
async function tab(name) {
  await page.click(`#tab-${name}`);
  await page.waitForSelector(`#page-${name}:not(.hidden)`);
}

/** The last assistant message's verdict once it has one. */
async function lastVerdict(timeout) {
  await page.waitForFunction(() => {
    const m = [...document.querySelectorAll('#chat-log .msg.assistant')].pop();
    return m && m.querySelector('.verdict');
  }, { timeout });
  return page.evaluate(() => {
    const m = [...document.querySelectorAll('#chat-log .msg.assistant')].pop();
    const v = m.querySelector('.verdict');
    return { text: m.querySelector('.text').textContent, verdict: v.textContent, ok: v.classList.contains('receipt-ok') };
  });
}

async function chat(question, timeout = 180_000) {
  const before = await page.$$eval('#chat-log .msg.assistant', (l) => l.length);
  await page.click('#chat-input', { clickCount: 3 });
  await page.type('#chat-input', question);
  await page.click('#chat-send');
  await page.waitForFunction((n) => {
    const all = document.querySelectorAll('#chat-log .msg.assistant');
    return all.length > n && all[all.length - 1].querySelector('.verdict');
  }, { timeout }, before);
  return lastVerdict(1000);
}

before(async () => {
  await mkdir(OUT, { recursive: true });
  await cryptoWaitReady();
  keyring = new Keyring({ type: 'sr25519', ss58Format: 42 });
  api = await ApiPromise.create({ provider: new WsProvider(NODE_WS), noInitWarn: true });
  const dave = keyring.addFromUri('//Dave');
  // The dishonest worker, registered on chain like any provider.
  fake = await startFakeWorker({
    port: FAKE_PORT, genesis: api.genesisHash.toHex(), prices: FAKE_PRICES,
    text: 'A blockchain is a shared ledger that many computers keep in agreement.',
  });
  if ((await api.query.compute.services(dave.address, 0)).isNone) {
    await sendFinal(api.tx.compute.registerService(0, {
      kind: 'Chat', model: FAKE_MODEL, modelHash: '0x' + '00'.repeat(32),
      url: `http://127.0.0.1:${FAKE_PORT}`, inputPrice: FAKE_PRICES.input,
      outputPrice: FAKE_PRICES.output, verifiability: 'none',
    }), dave);
  }
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
  page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 900 });
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
});

after(async () => {
  await writeFile(`${OUT}/metrics.json`, JSON.stringify(metrics, null, 2));
  await browser?.close();
  await fake?.close();
  await api?.disconnect();
});

test('the explorer lists the worker\'s services, live chain status, and measures the load', async () => {
  const t0 = Date.now();
  await page.goto(WEB_URL, { waitUntil: 'load' });
  await page.waitForFunction(() => document.body.dataset.ready === 'true', { timeout: 30_000 });
  await page.waitForFunction(() => {
    const t = document.querySelector('#services-table')?.textContent ?? '';
    return t.includes('SmolLM2-135M-Instruct') && t.includes('all-MiniLM-L6-v2');
  }, { timeout: 30_000 });
  metrics.servicesListedWallMs = Date.now() - t0;
  Object.assign(metrics, await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const paint = Object.fromEntries(performance.getEntriesByType('paint').map((p) => [p.name, Math.round(p.startTime)]));
    const mark = (n) => Math.round(performance.getEntriesByName(n)[0]?.startTime ?? -1);
    return {
      firstPaintMs: paint['first-paint'],
      firstContentfulPaintMs: paint['first-contentful-paint'],
      domContentLoadedMs: Math.round(nav.domContentLoadedEventEnd),
      loadEventMs: Math.round(nav.loadEventEnd),
      transferBytes: nav.transferSize + performance.getEntriesByType('resource').reduce((n, r) => n + (r.transferSize || 0), 0),
      appReadyMs: mark('app-ready'),
      servicesListedMs: mark('services-listed'),
    };
  }));
  console.log('page metrics', JSON.stringify(metrics));
  assert.ok(metrics.firstContentfulPaintMs > 0, 'first contentful paint measured');
  // Health of the real worker, the chain status live.
  await page.waitForFunction(() => document.querySelector('#services-table').textContent.includes('up ('), { timeout: 15_000 });
  const best0 = await page.$eval('#best-block', (e) => e.textContent);
  await page.waitForFunction((b) => document.querySelector('#best-block').textContent !== b, { timeout: 30_000 }, best0);
  assert.match(await page.$eval('#finalized-block', (e) => e.textContent), /#\d+/);
  assert.match(await page.$eval('#validators', (e) => e.textContent), /Validators \([1-9]/);
  // Sorting and filtering.
  await page.type('#page-explorer .filter', 'MiniLM');
  const rows = await page.$$eval('#services-table tbody tr', (r) => r.map((x) => x.textContent));
  assert.equal(rows.length, 1);
  assert.match(rows[0], /embedding/);
  await page.click('#page-explorer .filter', { clickCount: 3 });
  await page.keyboard.press('Backspace');
  // The fake service's name is shown as text, never parsed as markup.
  await page.waitForFunction(() => document.querySelector('#services-table').textContent.includes('onerror='), { timeout: 30_000 });
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await page.$$eval('#services-table img', (l) => l.length), 0);
  await shot('1-explorer');
});

test('a dev account deposits through the UI and the escrow changes on chain', async () => {
  const charlie = keyring.addFromUri('//Charlie').address;
  const bob = keyring.addFromUri('//Bob').address;
  const before = (await escrowOf(charlie, bob))?.balance.toBigInt() ?? 0n;
  await tab('account');
  await page.waitForFunction((a) => [...document.querySelectorAll('#account-select option')].some((o) => o.value === a), { timeout: 20_000 }, charlie);
  await page.select('#account-select', charlie);
  await page.waitForFunction((b) => [...document.querySelectorAll('#deposit-provider option')].some((o) => o.value === b), { timeout: 20_000 }, bob);
  await page.select('#deposit-provider', bob);
  await page.click('#deposit-amount', { clickCount: 3 });
  await page.type('#deposit-amount', '0.5');
  await page.click('#deposit-button');
  await page.waitForFunction(() => /finalized \(|failed/.test(document.querySelector('#tx-status').textContent), { timeout: 90_000 });
  const status = await page.$eval('#tx-status', (e) => e.textContent);
  assert.match(status, /Deposit: finalized \(.*Deposited/, status);
  const after = (await escrowOf(charlie, bob)).balance.toBigInt();
  assert.equal(after - before, UNIT / 2n, 'the escrow grew by 0.5 unit on chain');
  await page.waitForFunction(() => document.querySelector('#escrow-table tbody').textContent.includes('0.5'), { timeout: 20_000 });
  // A refused call shows the pallet's error: a deposit below the minimum.
  await page.click('#deposit-amount', { clickCount: 3 });
  await page.type('#deposit-amount', '0.000001');
  await page.click('#deposit-button');
  await page.waitForFunction(() => /failed/.test(document.querySelector('#tx-status').textContent), { timeout: 60_000 });
  assert.match(await page.$eval('#tx-status', (e) => e.textContent), /DepositBelowMinimum/);
  await shot('2-account-deposit');
});

test('a streamed chat returns text with a receipt verified in the browser and kept', async () => {
  const bob = keyring.addFromUri('//Bob').address;
  await tab('chat');
  await page.waitForFunction(() => document.querySelectorAll('#chat-service option').length >= 2, { timeout: 20_000 });
  await page.select('#chat-service', `${bob}/0`);
  const t0 = Date.now();
  const r = await chat('What is a blockchain? Answer in one sentence.');
  metrics.chatRoundTripMs = Date.now() - t0;
  assert.ok(r.text.trim().length > 0, 'the model answered');
  assert.ok(r.ok, `receipt verified: ${r.verdict}`);
  assert.match(r.verdict, /receipt verified: nonce 1/);
  const kept = await page.evaluate(() => Object.entries(localStorage).filter(([k]) => k.startsWith('compute-web:v1:')));
  assert.equal(kept.length, 1);
  const state = JSON.parse(kept[0][1]);
  assert.equal(state.nonce, '1');
  assert.ok(BigInt(state.total) > 0n);
  assert.ok(state.receipts[0].ok && state.receipts[0].signed.startsWith('0x'));
  // A second turn continues the nonce and the running total.
  const r2 = await chat('And who keeps it?');
  assert.ok(r2.ok, r2.verdict);
  assert.match(r2.verdict, /nonce 2/);
  assert.match(await page.$eval('#running-cost', (e) => e.textContent), /this session 0\.\d+ unit/);
  await page.click('#chat-ack');
  await page.waitForFunction(() => /ack: /.test(document.querySelector('#chat-notice').textContent), { timeout: 30_000 });
  assert.match(await page.$eval('#chat-notice', (e) => e.textContent), /ack: ✓ receipt verified: nonce 3/);
  await shot('3-chat');
});

test('the settlement shows up in the explorer and matches the verified total', async () => {
  const charlie = keyring.addFromUri('//Charlie').address;
  const bob = keyring.addFromUri('//Bob').address;
  const total = await page.evaluate(() => {
    const k = Object.keys(localStorage).find((x) => x.startsWith('compute-web:v1:'));
    return JSON.parse(localStorage.getItem(k)).total;
  });
  await tab('explorer');
  await page.waitForFunction((c) => {
    const t = document.querySelector('#settlements-table').textContent;
    return t.includes('ClaimSettled') && t.includes(c);
  }, { timeout: 120_000 }, short(charlie));
  // The worker may settle the first chat before the second one: wait for the whole total.
  let settled = '';
  for (let i = 0; i < 90 && settled !== total; i++) {
    settled = (await escrowOf(charlie, bob)).settledTotal.toString();
    if (settled !== total) await new Promise((r) => setTimeout(r, 1000));
  }
  assert.equal(settled, total, 'the chain settled exactly the total verified in the browser');
  // The provider's statistics moved with it (a storage subscription, no reload).
  await page.waitForFunction((b) => [...document.querySelectorAll('#providers-table tbody tr')]
    .some((r) => r.textContent.includes(b) && !/Earned/.test(r.textContent) && r.children[5]?.textContent !== '0'), { timeout: 30_000 }, short(bob));
  // Every provider stays listed while one's record changes (each record subscribed on its own).
  const dave = keyring.addFromUri('//Dave').address;
  const state = await page.evaluate(() => JSON.stringify({
    list: window.computeApp.chain.providerList, have: [...window.computeApp.chain.providers.keys()],
    services: [...window.computeApp.chain.services.keys()] }));
  assert.match(await page.$eval('#providers-table tbody', (e) => e.textContent), new RegExp(short(dave)), state);
  await shot('4-settlement');
});

test('a refund is requested, shows its unlock block, and is withdrawn once unlocked', async () => {
  const charlie = keyring.addFromUri('//Charlie').address;
  const bob = keyring.addFromUri('//Bob').address;
  await tab('account');
  const row = `#escrow-table .actions[data-provider="${bob}"]`;
  await page.waitForSelector(row);
  await page.click(`${row} .refund-amount`, { clickCount: 3 });
  await page.type(`${row} .refund-amount`, '0.1');
  await page.click(`${row} .refund-request`);
  await page.waitForFunction(() => /Refund request: finalized|failed/.test(document.querySelector('#tx-status').textContent), { timeout: 90_000 });
  assert.match(await page.$eval('#tx-status', (e) => e.textContent), /RefundRequested/);
  const unlockAt = (await escrowOf(charlie, bob)).unlockAt.toNumber();
  await page.waitForFunction((u) => document.querySelector('#escrow-table').textContent.includes(`#${u}`), { timeout: 20_000 }, unlockAt);
  await shot('5-account-refund-pending');
  await page.waitForFunction((r) => !document.querySelector(`${r} .refund-withdraw`).disabled, { timeout: 120_000 }, row);
  await page.click(`${row} .refund-withdraw`);
  await page.waitForFunction(() => /Withdraw refund: finalized|failed/.test(document.querySelector('#tx-status').textContent), { timeout: 90_000 });
  assert.match(await page.$eval('#tx-status', (e) => e.textContent), /RefundWithdrawn/);
  assert.equal((await escrowOf(charlie, bob)).pendingRefund.toBigInt(), 0n);
});

test('forged receipts from a dishonest worker are flagged, never counted', async () => {
  const dave = keyring.addFromUri('//Dave').address;
  await tab('chat');
  await page.select('#chat-service', `${dave}/0`);
  const expect = {
    'bad-signature': /signature does not verify/,
    'wrong-signer': /signature does not verify/,
    'fee-above-price': /at the on-chain prices/,
    'wrong-hash': /response hash/,
  };
  for (const mode of MODES) {
    const r = await chat(`Tell me about ${mode}.`, 30_000);
    assert.equal(r.ok, false, `${mode}: flagged`);
    assert.match(r.verdict, /RECEIPT REJECTED/);
    assert.match(r.verdict, expect[mode], `${mode}: ${r.verdict}`);
    // The provider is now distrusted: the page refuses to sign for it until told otherwise.
    await page.waitForSelector('#distrusted');
    const total = await page.$eval('#verified-total', (e) => e.textContent);
    assert.match(total, /verified total with this provider 0 unit/, 'nothing forged was counted');
    await page.click('#trust-again');
    await page.waitForFunction(() => !document.querySelector('#distrusted'));
  }
  assert.deepEqual(fake.served, MODES);
  await shot('6-chat-forged');
  await tab('receipts');
  await page.waitForFunction(() => document.querySelector('#receipts-table').textContent.includes('REJECTED'));
  await shot('7-receipts');
  assert.deepEqual(consoleErrors.filter((e) => !/Failed to load resource|net::ERR/.test(e)), [], 'no errors in the page');
});
