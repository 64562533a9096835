#!/usr/bin/env node
// polkadot.js client for the compute marketplace. Everything (calls, storage, runtime API,
// events, errors) comes from the chain's own metadata: no type definitions are written here.
//
//   node compute.mjs [--node ws://127.0.0.1:9944] [--key //Charlie] <command> [args]
//     escrow <provider>                 balance, pending refund, unlock block
//     deposit <provider> <amount>       amount in smallest units, or e.g. 0.5unit
//     refund-request <provider> <amount>
//     refund-cancel <provider>
//     refund-withdraw <provider>
//     services                          registered services (runtime API)

import { ApiPromise, WsProvider, Keyring } from '@polkadot/api';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

/** Smallest units per token (12 decimals). */
export const UNIT = 10n ** 12n;

/** Connect to a node; rejects after `timeoutMs` when nothing answers. */
export async function connect(url = 'ws://127.0.0.1:9944', timeoutMs = 10_000) {
  const provider = new WsProvider(url, 250);
  let timer;
  try {
    return await Promise.race([
      ApiPromise.create({ provider, noInitWarn: true, throwOnConnect: false }),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`cannot reach the node at ${url}`)), timeoutMs);
      }),
    ]);
  } catch (e) {
    await provider.disconnect().catch(() => {});
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** An sr25519 key from a secret URI (`//Alice` on a dev chain) or phrase. */
export function keyFrom(uri) {
  return new Keyring({ type: 'sr25519', ss58Format: 42 }).addFromUri(uri);
}

/** `0.5unit` or a plain integer of smallest units, as a BigInt. */
export function parseAmount(s) {
  const t = String(s).trim().toLowerCase();
  if (t.endsWith('unit')) {
    const [int, frac = ''] = t.slice(0, -4).split('.');
    if (frac.length > 12 || !/^\d*$/.test(int) || !/^\d*$/.test(frac)) {
      throw new Error(`\`${s}\` is not an amount`);
    }
    return BigInt(int || '0') * UNIT + BigInt(frac.padEnd(12, '0') || '0');
  }
  if (!/^\d+$/.test(t)) throw new Error(`\`${s}\` is not an amount (smallest units, or e.g. 0.5unit)`);
  return BigInt(t);
}

/** The `module.Error` name and docs of a failed dispatch, from the metadata. */
function explain(api, dispatchError) {
  if (dispatchError.isModule) {
    const { section, name, docs } = api.registry.findMetaError(dispatchError.asModule);
    return `${section}.${name}: ${docs.join(' ').trim()}`;
  }
  return dispatchError.toString();
}

/**
 * Sign, submit and wait for finality. Resolves with the block hash and the pallet's events
 * (name, and each field as a string); rejects with the pallet error name when the call failed.
 * `onStatus` sees each stage (ready, inBlock, finalized) for progress output.
 */
export function submit(api, tx, signer, onStatus = () => {}) {
  return new Promise((resolve, reject) => {
    let unsub = () => {};
    let failed = null;
    tx.signAndSend(signer, (result) => {
      const { status, events, dispatchError } = result;
      onStatus(status.type);
      if (dispatchError && !failed) failed = new Error(explain(api, dispatchError));
      if (status.isInBlock && failed) {
        unsub();
        reject(failed);
      } else if (status.isFinalized) {
        unsub();
        if (failed) return reject(failed);
        resolve({
          blockHash: status.asFinalized.toHex(),
          events: events
            .filter(({ event }) => event.section === 'compute')
            .map(({ event }) => ({
              name: event.method,
              // Field name -> value as a string (amounts stay exact).
              data: Object.fromEntries(
                event.data.map((v, i) => [event.data.names?.[i] ?? String(i), v.toString()])),
            })),
        });
      } else if (status.isDropped || status.isInvalid || status.isUsurped) {
        unsub();
        reject(new Error(`transaction ${status.type.toLowerCase()}`));
      }
    }).then((u) => { unsub = u; }, reject);
  });
}

/** Fund the escrow of `signer` with `provider`. */
export const deposit = (api, signer, provider, amount, onStatus) =>
  submit(api, api.tx.compute.deposit(provider, amount), signer, onStatus);

/** Ask for `amount` back; withdrawable after the refund lock. */
export const requestRefund = (api, signer, provider, amount, onStatus) =>
  submit(api, api.tx.compute.requestRefund(provider, amount), signer, onStatus);

/** Make the pending refund spendable again. */
export const cancelRefund = (api, signer, provider, onStatus) =>
  submit(api, api.tx.compute.cancelRefund(provider), signer, onStatus);

/** Withdraw the unlocked refund to the free balance. */
export const withdrawRefund = (api, signer, provider, onStatus) =>
  submit(api, api.tx.compute.withdrawRefund(provider), signer, onStatus);

function plainEscrow(e) {
  return {
    balance: e.balance.toBigInt(),
    pendingRefund: e.pendingRefund.toBigInt(),
    unlockAt: e.unlockAt.toNumber(),
    settledNonce: e.settledNonce.toBigInt(),
    settledTotal: e.settledTotal.toBigInt(),
  };
}

/** The escrow of (user, provider) from storage, or null. */
export async function escrow(api, user, provider) {
  const e = await api.query.compute.escrows(user, provider);
  return e.isSome ? plainEscrow(e.unwrap()) : null;
}

/** The same escrow through the runtime API `ComputeApi_escrow` (what the `compute_*` RPC uses). */
export async function escrowViaRuntimeApi(api, user, provider) {
  const e = await api.call.computeApi.escrow(user, provider);
  return e.isSome ? plainEscrow(e.unwrap()) : null;
}

/**
 * The account that keeps every escrow's funds: `modl` ++ the pallet's `PalletId` constant,
 * zero-padded to 32 bytes (FRAME's `into_account_truncating`).
 */
export function escrowAccount(api) {
  const id = api.consts.compute.palletId.toU8a();
  const raw = new Uint8Array(32);
  raw.set(new TextEncoder().encode('modl'), 0);
  raw.set(id, 4);
  return api.createType('AccountId', raw).toString();
}

/** All registered services through the runtime API. */
export async function services(api) {
  const out = [];
  let after = null;
  for (;;) {
    const page = await api.call.computeApi.services(after, 256);
    for (const [provider, id, s] of page) {
      out.push({
        provider: provider.toString(),
        serviceId: id.toNumber(),
        model: s.model.toUtf8(),
        modelHash: s.modelHash.toHex(),
        url: s.url.toUtf8(),
        inputPrice: s.inputPrice.toBigInt(),
        outputPrice: s.outputPrice.toBigInt(),
      });
    }
    if (page.length < 256) return out;
    const last = page[page.length - 1];
    after = [last[0], last[1]];
  }
}

const show = (v) => `${v / UNIT}.${String(v % UNIT).padStart(12, '0')} unit`;

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      node: { type: 'string', default: process.env.COMPUTE_NODE ?? 'ws://127.0.0.1:9944' },
      key: { type: 'string', default: process.env.COMPUTE_KEY },
    },
  });
  const [command, provider, amount] = positionals;
  if (!command) throw new Error('usage: compute.mjs [--node URL] [--key URI] <escrow|deposit|refund-request|refund-cancel|refund-withdraw|services> ...');
  const api = await connect(values.node);
  try {
    const needKey = () => {
      if (!values.key) throw new Error('give your key with --key (e.g. //Charlie) or COMPUTE_KEY');
      return keyFrom(values.key);
    };
    const progress = (s) => process.stderr.write(`  ${s}\n`);
    let out;
    switch (command) {
      case 'services':
        out = await services(api);
        break;
      case 'escrow':
        out = await escrow(api, needKey().address, provider);
        if (!out) throw new Error(`no escrow with ${provider}`);
        break;
      case 'deposit':
        out = await deposit(api, needKey(), provider, parseAmount(amount), progress);
        break;
      case 'refund-request':
        out = await requestRefund(api, needKey(), provider, parseAmount(amount), progress);
        break;
      case 'refund-cancel':
        out = await cancelRefund(api, needKey(), provider, progress);
        break;
      case 'refund-withdraw':
        out = await withdrawRefund(api, needKey(), provider, progress);
        break;
      default:
        throw new Error(`unknown command ${command}`);
    }
    console.log(JSON.stringify(out, (_, v) => (typeof v === 'bigint' ? v.toString() : v), 2));
    if (command === 'escrow') console.error(`balance ${show(out.balance)}, pending refund ${show(out.pendingRefund)}`);
  } finally {
    await api.disconnect();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(`error: ${e.message}`);
    process.exit(1);
  });
}
