// The validator steps of validator.mjs against a real dev node (instant seal): keys made in the
// node's keystore with a proof of possession, a bonded candidacy, leaving with the bond back,
// purging the keys with their deposit back; and the refusals an impostor meets. Joining the
// authoring set itself takes session changes on a multi-validator network: zombienet's
// validators.zndsl covers that.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, keyFrom, submit } from '../compute.mjs';
import { rotateKeys, join as joinSet, leave, purgeKeys, status } from '../validator.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const nodeBin = process.env.COMPUTE_NODE_BIN ?? join(here, '../../../target/debug/compute-node');

const freePort = () => new Promise((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});

let node, dir, api, eve, ferdie;

before(async () => {
  assert.ok(existsSync(nodeBin), `${nodeBin} missing: build it with \`cargo test --workspace --no-run\``);
  dir = mkdtempSync(join(tmpdir(), 'compute-validator-js-'));
  const rpc = await freePort();
  node = spawn(nodeBin, ['--dev', '--sealing', 'instant', '--base-path', dir, '--rpc-port', String(rpc),
    '--port', String(await freePort()), '--no-prometheus', '--no-telemetry', '--no-mdns'],
  { stdio: 'ignore' });
  api = await connect(`ws://127.0.0.1:${rpc}`, 60_000);
  [eve, ferdie] = ['//Eve', '//Ferdie'].map(keyFrom);
});

after(async () => {
  await api?.disconnect();
  node?.kill('SIGINT');
  rmSync(dir, { recursive: true, force: true });
});

const reserved = async (who) => (await api.query.system.account(who)).data.reserved.toBigInt();

test('a new operator registers keys with their proof, bonds, leaves and gets everything back', async () => {
  const bond = (await api.query.collatorSelection.candidacyBond()).toBigInt();
  const keyDeposit = api.consts.session.keyDeposit.toBigInt();
  const generated = await rotateKeys(api, eve.address);
  assert.match(generated.keys, /^0x[0-9a-f]{128}$/, 'an Aura and a GRANDPA key');

  await joinSet(api, eve, generated);
  let s = await status(api, eve.address);
  assert.equal(s.account.keys, generated.keys);
  assert.ok(s.account.candidate);
  assert.ok(!s.account.validator, 'in the set only after two session changes');
  assert.deepEqual(s.invulnerables, [keyFrom('//Alice').address]);
  assert.equal(await reserved(eve.address), bond + keyDeposit);

  await leave(api, eve);
  s = await status(api, eve.address);
  assert.ok(!s.account.candidate);
  assert.equal(await reserved(eve.address), keyDeposit, 'the bond comes back at once');

  await purgeKeys(api, eve);
  assert.equal((await status(api, eve.address)).account.keys, null);
  assert.equal(await reserved(eve.address), 0n);
});

test("an impostor cannot register another operator's keys or bond without keys", async () => {
  // Ferdie replays Eve's fresh keys and proof: the proof names Eve's account, not Ferdie's.
  const eves = await rotateKeys(api, eve.address);
  await assert.rejects(
    submit(api, api.tx.session.setKeys(eves.keys, eves.proof), ferdie),
    /session\.InvalidProof/,
  );
  // Keys that are not in any keystore cannot be proven at all.
  await assert.rejects(
    submit(api, api.tx.session.setKeys(`0x${'11'.repeat(64)}`, '0x'), ferdie),
    /session\.InvalidProof/,
  );
  // A candidacy needs registered keys.
  await assert.rejects(
    submit(api, api.tx.collatorSelection.registerAsCandidate(), ferdie),
    /collatorSelection\.ValidatorNotRegistered/,
  );
  // Only root names invulnerables.
  await assert.rejects(
    submit(api, api.tx.collatorSelection.setInvulnerables([ferdie.address]), ferdie),
    /BadOrigin/,
  );
});
