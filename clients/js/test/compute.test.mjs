// The polkadot.js client against a real dev node (instant seal): a provider registers, a user
// deposits, asks for a refund, is refused before the unlock, withdraws after it; every read and
// write goes through the chain's metadata. The node binary comes from `cargo test --no-run`
// (target/debug/compute-node) or COMPUTE_NODE_BIN.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  connect, keyFrom, submit, deposit, requestRefund, cancelRefund, withdrawRefund,
  escrow, escrowViaRuntimeApi, escrowAccount, services, parseAmount, UNIT,
} from '../compute.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const nodeBin = process.env.COMPUTE_NODE_BIN ?? join(here, '../../../target/debug/compute-node');

const freePort = () => new Promise((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});

let node, dir, api, alice, bob, charlie;

before(async () => {
  assert.ok(existsSync(nodeBin), `${nodeBin} missing: build it with \`cargo test --workspace --no-run\``);
  dir = mkdtempSync(join(tmpdir(), 'compute-js-'));
  const rpc = await freePort();
  node = spawn(nodeBin, ['--dev', '--sealing', 'instant', '--base-path', dir, '--rpc-port', String(rpc),
    '--port', String(await freePort()), '--no-prometheus', '--no-telemetry', '--no-mdns'],
  { stdio: 'ignore' });
  api = await connect(`ws://127.0.0.1:${rpc}`, 60_000);
  [alice, bob, charlie] = ['//Alice', '//Bob', '//Charlie'].map(keyFrom);
});

after(async () => {
  await api?.disconnect();
  if (node && node.exitCode === null) {
    // Wait for the node to exit: it may still be writing its database when killed.
    const exited = new Promise((resolve) => node.once('exit', resolve));
    node.kill();
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
});

test('a node that is not there is a clear error', async () => {
  await assert.rejects(connect('ws://127.0.0.1:1', 1_000), /cannot reach the node/);
});

test('amounts', () => {
  assert.equal(parseAmount('0.5unit'), UNIT / 2n);
  assert.equal(parseAmount('42'), 42n);
  assert.throws(() => parseAmount('lots'), /not an amount/);
});

test('deposit, refund request, early withdraw refused, withdraw after the lock', async () => {
  // A provider registers a service: the enum and bounded byte vectors are encoded from metadata.
  const reg = await submit(api, api.tx.compute.registerService(0, {
    kind: 'Chat', model: 'SmolLM2-135M-Instruct', modelHash: `0x${'4d'.repeat(32)}`,
    url: 'http://127.0.0.1:1', inputPrice: 1_000_000n, outputPrice: 4_000_000n,
    verifiability: 'none',
  }), bob);
  assert.deepEqual(reg.events.map((e) => e.name), ['ServiceRegistered']);
  const listed = await services(api);
  assert.equal(listed.length, 1);
  assert.equal(listed[0].provider, bob.address);
  assert.equal(listed[0].model, 'SmolLM2-135M-Instruct');
  assert.equal(listed[0].modelHash, `0x${'4d'.repeat(32)}`);

  // Root shortens the refund lock to two blocks.
  await submit(api, api.tx.sudo.sudo(api.tx.compute.setRefundLock(2)), alice);
  assert.equal((await api.query.compute.refundLock()).toNumber(), 2);

  // Bad input: below the minimum deposit, and to someone who is not a provider.
  await assert.rejects(deposit(api, charlie, bob.address, 1n), /compute\.DepositBelowMinimum/);
  await assert.rejects(deposit(api, charlie, alice.address, UNIT), /compute\.ProviderNotBonded/);
  assert.equal(await escrow(api, charlie.address, bob.address), null);

  const freeBefore = (await api.query.system.account(charlie.address)).data.free.toBigInt();
  const pot = escrowAccount(api);
  const potBefore = (await api.query.system.account(pot)).data.free.toBigInt();
  const stages = [];
  const dep = await deposit(api, charlie, bob.address, parseAmount('0.5unit'), (s) => stages.push(s));
  assert.equal(stages.at(-1), 'Finalized', stages.join());
  // The first deposit creates the escrow record and holds its storage deposit.
  assert.deepEqual(dep.events.map((x) => x.name), ['EscrowOpened', 'Deposited']);
  const recordDeposit = BigInt(dep.events[0].data.deposit);
  assert.ok(recordDeposit > 0n, 'a record deposit is held');
  let e = await escrow(api, charlie.address, bob.address);
  assert.equal(e.balance, UNIT / 2n);
  assert.deepEqual(await escrowViaRuntimeApi(api, charlie.address, bob.address), e);
  const acct = (await api.query.system.account(charlie.address)).data;
  assert.ok(acct.free.toBigInt() < freeBefore - UNIT / 2n - recordDeposit,
    'deposit, record deposit and fee left the free balance');
  assert.ok(acct.reserved.toBigInt() >= recordDeposit, 'the record deposit is held');
  const potAfter = (await api.query.system.account(pot)).data.free.toBigInt();
  assert.equal(potAfter - potBefore, UNIT / 2n, 'the deposit went to the escrow account');

  await assert.rejects(requestRefund(api, charlie, bob.address, UNIT), /compute\.RefundExceedsBalance/);
  const req = await requestRefund(api, charlie, bob.address, parseAmount('0.2unit'));
  assert.equal(req.events[0].name, 'RefundRequested');
  e = await escrow(api, charlie.address, bob.address);
  assert.equal(e.pendingRefund, parseAmount('0.2unit'));
  const now = (await api.rpc.chain.getHeader()).number.toNumber();
  assert.equal(e.unlockAt, now + 2);

  // The next block is before the unlock: refused, and nothing changes.
  await assert.rejects(withdrawRefund(api, charlie, bob.address), /compute\.RefundLocked/);
  assert.deepEqual(await escrow(api, charlie.address, bob.address), e);

  // Cancel and ask again, then let the lock pass (each transaction makes a block).
  await cancelRefund(api, charlie, bob.address);
  assert.equal((await escrow(api, charlie.address, bob.address)).pendingRefund, 0n);
  await requestRefund(api, charlie, bob.address, parseAmount('0.2unit'));
  await submit(api, api.tx.system.remark('0x00'), alice);
  await submit(api, api.tx.system.remark('0x01'), alice);
  const free = (await api.query.system.account(charlie.address)).data.free.toBigInt();
  const w = await withdrawRefund(api, charlie, bob.address);
  assert.deepEqual(w.events.map((x) => x.name), ['RefundWithdrawn']);
  assert.equal(BigInt(w.events[0].data.amount), parseAmount('0.2unit'));
  e = await escrow(api, charlie.address, bob.address);
  assert.equal(e.balance, parseAmount('0.3unit'));
  assert.equal(e.pendingRefund, 0n);
  const freeAfter = (await api.query.system.account(charlie.address)).data.free.toBigInt();
  assert.ok(freeAfter > free && freeAfter <= free + parseAmount('0.2unit'), 'refund back in the free balance, minus the fee');
});
