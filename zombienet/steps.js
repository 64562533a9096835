// The steps of validators.zndsl, run by zombienet's `js-script` (CommonJS, `run` returns 0 on
// success and throws otherwise). Every step reads the chain through Alice's node, which the test
// never stops. Eve's node is run with scripts/validator.sh, the script the README's validator
// guide describes; the workload with zombienet/workload.sh. Files live in COMPUTE_TEST_DIR
// (scripts/zombienet.sh makes it and cleans up after).

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const DIR = process.env.COMPUTE_TEST_DIR;
const EVE_BASE = DIR && path.join(DIR, 'eve');
const WORKLOAD_DIR = DIR && path.join(DIR, 'workload');
const EVE = '5HGjWAeFDfFCWPsjFQdVV2Msvz2XtMktvgocEZcCj68kUMaw';
const FERDIE = '5CiPPseXPECbkjWCa6MnjNokrgYjMqmKndv2rSnekmSK2DjL';
const CHARLIE = '5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y';
const SESSION_LENGTH = 10;
const IDLE_SESSIONS = 6;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const say = (...a) => console.log('    [steps]', ...a);

async function waitFor(what, fn, timeoutMs, everyMs = 2000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

async function connect(url) {
  const { ApiPromise, WsProvider } = zombie;
  const api = await ApiPromise.create({ provider: new WsProvider(url), noInitWarn: true });
  return api;
}

const finalized = async (api) =>
  (await api.rpc.chain.getHeader(await api.rpc.chain.getFinalizedHead())).number.toNumber();
const best = async (api) => (await api.rpc.chain.getHeader()).number.toNumber();

/**
 * The author of the best block: its Aura slot, modulo the number of validators, indexes the
 * session's validators as of its parent (Aura's authorities are theirs, in the same order).
 */
async function bestAuthor(api) {
  const header = await api.rpc.chain.getHeader();
  const pre = header.digest.logs.find((l) => l.isPreRuntime && l.asPreRuntime[0].isAura);
  if (!pre) return undefined;
  const slot = api.createType('u64', pre.asPreRuntime[1]).toBigInt();
  const at = await api.at(header.parentHash);
  const set = await at.query.session.validators();
  return set[Number(slot % BigInt(set.length))]?.toString();
}

/** Sign, send and wait for finality; fails on a failed dispatch, also inside `sudo`. */
function submit(api, tx, signer) {
  return new Promise((resolve, reject) => {
    let unsub = () => {};
    tx.signAndSend(signer, ({ status, events, dispatchError }) => {
      const fail = (m) => { unsub(); reject(new Error(m)); };
      if (dispatchError) return fail(`dispatch failed: ${dispatchError.toString()}`);
      for (const { event } of events) {
        if (event.section === 'sudo' && event.method === 'Sudid' && event.data[0].isErr) {
          return fail(`sudo call failed: ${event.data[0].toString()}`);
        }
      }
      if (status.isFinalized) { unsub(); resolve({ block: status.asFinalized.toHex(), events }); }
      if (status.isDropped || status.isInvalid || status.isUsurped) fail(`transaction ${status.type}`);
    }).then((u) => { unsub = u; }, reject);
  });
}

/** Run a script of the repository; resolves with its output, rejects on a non-zero exit. */
function sh(args, env = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn('bash', args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('close', (code) => {
      for (const line of out.trim().split('\n').slice(-12)) say(`${args[0]}: ${line}`);
      code === 0 ? resolve(out) : reject(new Error(`${args.join(' ')} exited with ${code}`));
    });
  });
}

const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});

async function evePorts() {
  const file = path.join(DIR, 'eve-ports.json');
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const ports = { rpc: await freePort(), p2p: await freePort(), prometheus: await freePort() };
  fs.writeFileSync(file, JSON.stringify(ports));
  return ports;
}

async function startEve(alice) {
  const ports = await evePorts();
  const addrs = (await alice.rpc.system.localListenAddresses()).map(String);
  // zombienet's nodes listen on loopback over WebSocket (`/ip4/127.0.0.1/tcp/<port>/ws`).
  const loopback = addrs.filter((a) => a.startsWith('/ip4/127.0.0.1/tcp/') && a.includes('/p2p/'));
  const boot = loopback.find((a) => !a.includes('/ws')) ?? loopback[0];
  if (!boot) throw new Error(`no loopback address for Alice among ${addrs}`);
  await sh(['scripts/validator.sh', 'start'], {
    CHAIN: networkChainSpec, BASE: EVE_BASE, NAME: 'eve', BOOTNODES: boot,
    RPC_PORT: String(ports.rpc), P2P_PORT: String(ports.p2p), PROMETHEUS_PORT: String(ports.prometheus),
  });
  return connect(`ws://127.0.0.1:${ports.rpc}`);
}

async function waitForEveToAuthor(alice, timeoutMs) {
  await waitFor('a block authored by Eve', async () => (await bestAuthor(alice)) === EVE, timeoutMs, 1000);
}

async function finalityAdvances(api, blocks, timeoutMs) {
  const from = await finalized(api);
  await waitFor(`finality past #${from + blocks}`, async () => (await finalized(api)) >= from + blocks, timeoutMs);
  say(`finalized #${from} -> #${await finalized(api)}`);
}

async function validators(api) {
  return (await api.query.session.validators()).map(String);
}

async function settledTotal(api) {
  const e = await api._rpcCore.provider.send('compute_escrow', [CHARLIE, FERDIE, null]);
  return BigInt(e?.settledTotal ?? 0);
}

let networkChainSpec;

const steps = {
  async 'open-network'(alice) {
    const { Keyring, util } = zombie;
    const sudo = new Keyring({ type: 'sr25519' }).addFromUri('//Alice');
    const item = (name, v) => [
      `0x${Buffer.from(util.xxhashAsU8a(`:${name}:`, 128)).toString('hex')}`,
      `0x${Buffer.from(new Uint32Array([v]).buffer).toString('hex')}`,
    ];
    // Short sessions so that set changes take a minute; a long grace for an idle candidate so
    // that Eve's restart on a busy machine does not cost her the candidacy (the runtime's tests
    // cover the removal itself).
    const items = [item('SessionLength', SESSION_LENGTH), item('IdleSessions', IDLE_SESSIONS)];
    await submit(alice, alice.tx.sudo.sudo(alice.tx.system.setStorage(items)), sudo);
    for (const [key, value] of items) {
      const stored = (await alice.rpc.state.getStorage(key)).toHex();
      if (!stored.endsWith(value.slice(2))) throw new Error(`${key} holds ${stored}`);
    }
    say(`sessions are ${SESSION_LENGTH} blocks; an idle candidate is removed after ${IDLE_SESSIONS}`);
    // The network starts permissioned: root opens one slot to a bonded stranger.
    await submit(alice, alice.tx.sudo.sudo(alice.tx.collatorSelection.setDesiredCandidates(1)), sudo);
    say('one candidate slot open');
  },

  async 'workload-start'(alice, wsUri) {
    await sh(['zombienet/workload.sh', 'start'], { NODE_WS: wsUri, DIR: WORKLOAD_DIR });
  },

  async join(alice) {
    const eve = await startEve(alice);
    try {
      await waitFor('Eve to sync', async () => (await best(eve)) >= (await best(alice)) - 1, 180_000);
      const ports = await evePorts();
      await sh(['scripts/validator.sh', 'join'], { KEY: '//Eve', RPC_PORT: String(ports.rpc) });
      // In the set two session changes after registering (the runtime's tests check the count).
      await waitFor('Eve in the validator set', async () => (await validators(alice)).includes(EVE),
        (3 * SESSION_LENGTH + 5) * 6_000 * 2);
      say(`Eve is validator ${(await validators(alice)).indexOf(EVE) + 1} of ${(await validators(alice)).length}`);
      const grandpa = await alice.query.grandpa.authorities();
      if (grandpa.length !== 5) throw new Error(`GRANDPA has ${grandpa.length} authorities`);
      await waitForEveToAuthor(alice, 180_000);
      say('Eve authored a block');
    } finally {
      await eve.disconnect();
    }
  },

  async 'finality-advances'(alice) {
    await finalityAdvances(alice, 4, 170_000);
  },

  async 'kill-and-restart-eve'(alice) {
    const pid = Number(fs.readFileSync(path.join(EVE_BASE, 'node.pid'), 'utf8'));
    process.kill(pid, 'SIGKILL');
    await waitFor('Eve to die', async () => { try { process.kill(pid, 0); return false; } catch { return true; } }, 10_000, 200);
    say(`killed Eve's node (pid ${pid})`);
    await finalityAdvances(alice, 4, 120_000);
    const eve = await startEve(alice);
    try {
      const target = await finalized(alice);
      await waitFor('Eve to catch up', async () => (await finalized(eve)) >= target, 180_000);
      say(`Eve caught up: finalized #${await finalized(eve)}, best #${await best(eve)}`);
      await waitForEveToAuthor(alice, 180_000);
      say('Eve authored again');
      const candidates = (await alice.query.collatorSelection.candidateList()).map((c) => c.who.toString());
      if (!candidates.includes(EVE)) throw new Error('Eve lost her candidacy while her node was down');
    } finally {
      await eve.disconnect();
    }
  },

  async 'finality-stalls'(alice) {
    // Votes already cast may still finish a round: let that settle first.
    await sleep(18_000);
    const [f1, b1] = [await finalized(alice), await best(alice)];
    await sleep(36_000);
    const [f2, b2] = [await finalized(alice), await best(alice)];
    say(`with two of five paused: best #${b1} -> #${b2}, finalized #${f1} -> #${f2}`);
    if (b2 < b1 + 2) throw new Error('blocks stopped being produced');
    if (f2 !== f1) throw new Error('finality went on without a supermajority');
  },

  async upgrade(alice) {
    const { Keyring } = zombie;
    const sudo = new Keyring({ type: 'sr25519' }).addFromUri('//Alice');
    const wasm = process.env.COMPUTE_UPGRADE_WASM;
    if (!wasm || !fs.existsSync(wasm)) throw new Error(`no upgrade wasm at ${wasm}`);
    const code = `0x${fs.readFileSync(wasm).toString('hex')}`;
    const before = (await alice.rpc.state.getRuntimeVersion()).specVersion.toNumber();
    const settledBefore = await settledTotal(alice);
    const { events } = await submit(alice, alice.tx.sudo.sudo(alice.tx.system.setCode(code)), sudo);
    if (!events.some(({ event }) => event.section === 'system' && event.method === 'CodeUpdated')) {
      throw new Error('no CodeUpdated event');
    }
    await waitFor('the new runtime', async () =>
      (await alice.rpc.state.getRuntimeVersion()).specVersion.toNumber() === before + 1, 60_000);
    say(`runtime spec_version ${before} -> ${before + 1}`);
    const atUpgrade = await settledTotal(alice);
    await waitFor('a settlement after the upgrade', async () => (await settledTotal(alice)) > atUpgrade, 240_000);
    say(`settled ${settledBefore} before, ${atUpgrade} at and ${await settledTotal(alice)} after the upgrade`);
    await finalityAdvances(alice, 3, 120_000);
  },

  async leave(alice, wsUri) {
    const ports = await evePorts();
    await sh(['scripts/validator.sh', 'leave'], { KEY: '//Eve', RPC_PORT: String(ports.rpc) });
    await waitFor('Eve out of the validator set', async () => !(await validators(alice)).includes(EVE),
      (3 * SESSION_LENGTH + 5) * 6_000 * 2);
    const set = await validators(alice);
    if (set.length !== 4) throw new Error(`${set.length} validators after Eve left`);
    await finalityAdvances(alice, 3, 120_000);
    await sh(['scripts/validator.sh', 'stop'], { BASE: EVE_BASE });
    await sh(['scripts/validator.sh', 'purge-keys'], { KEY: '//Eve', CHAIN_RPC: wsUri, RPC_PORT: String(ports.rpc) });
    const held = (await alice.query.system.account(EVE)).data;
    say(`Eve left; her reserved balance is now ${held.reserved.toString()}`);
    if (!held.reserved.isZero()) throw new Error('Eve still has funds set aside');
  },

  async 'workload-check'() {
    await sh(['zombienet/workload.sh', 'check'], { DIR: WORKLOAD_DIR, NODE_WS: aliceWs });
  },
};

let aliceWs;

async function run(nodeName, networkInfo, args) {
  if (!DIR) throw new Error('COMPUTE_TEST_DIR is not set: run the test with scripts/zombienet.sh');
  const step = steps[args[0]];
  if (!step) throw new Error(`no step ${args[0]}`);
  networkChainSpec = networkInfo.chainSpecPath;
  aliceWs = networkInfo.nodesByName[nodeName].wsUri;
  const api = await connect(aliceWs);
  try {
    say(`step ${args[0]}`);
    await step(api, aliceWs);
    return 0;
  } finally {
    await api.disconnect();
  }
}

module.exports = { run };
