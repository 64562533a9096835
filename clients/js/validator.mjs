#!/usr/bin/env node
// A validator's chain steps with polkadot.js: make session keys on the validator's own node,
// register them with their proof of possession, bond as a candidate, leave, and read where an
// account stands. Everything comes from the chain's metadata (`session`, `collatorSelection`).
//
//   node validator.mjs --node ws://127.0.0.1:9944 --key //Eve [--own-node ws://127.0.0.1:9955] <command>
//     join        rotate keys on --own-node (default --node), session.setKeys, registerAsCandidate
//     leave       collatorSelection.leaveIntent: out of the set two sessions later, bond back now
//     purge-keys  session.purgeKeys: after leaving, frees the key deposit
//     status      session index, validators, invulnerables, candidates and this account's place
//
// --own-node must be the validator's node itself (its keystore gets the new keys), reached over
// a local or otherwise private connection: `author_rotateKeysWithOwner` is an unsafe RPC.

import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { u8aToHex } from '@polkadot/util';
import { decodeAddress } from '@polkadot/util-crypto';
import { connect, keyFrom, submit } from './compute.mjs';

/**
 * New session keys in the keystore of the node behind `ownApi`, with the proof that `owner`
 * (an SS58 address) holds them. Resolves with `{ keys, proof }` as hex.
 */
export async function rotateKeys(ownApi, owner) {
  // Not among polkadot.js's decorated RPCs: sent as is on the API's connection.
  const out = await ownApi._rpcCore.provider.send('author_rotateKeysWithOwner', [u8aToHex(decodeAddress(owner))]);
  if (!out?.keys || !out?.proof) {
    throw new Error('the node returned no keys or no proof (is this a validator node with unsafe RPC?)');
  }
  return { keys: out.keys, proof: out.proof };
}

/** Register `keys` (with `proof`) for `signer`, then bond as a candidate. */
export async function join(api, signer, { keys, proof }, onStatus) {
  await submit(api, api.tx.session.setKeys(keys, proof), signer, onStatus);
  const bond = (await api.query.collatorSelection.candidacyBond()).toBigInt();
  const free = (await api.query.system.account(signer.address)).data.free.toBigInt();
  if (free <= bond) throw new Error(`the candidacy bond is ${bond}; ${signer.address} has ${free} free`);
  await submit(api, api.tx.collatorSelection.registerAsCandidate(), signer, onStatus);
}

/** Stop being a candidate: out of the set at the second session change, bond back at once. */
export const leave = (api, signer, onStatus) =>
  submit(api, api.tx.collatorSelection.leaveIntent(), signer, onStatus);

/** Remove the session keys (and free their deposit); for after leaving. */
export const purgeKeys = (api, signer, onStatus) =>
  submit(api, api.tx.session.purgeKeys(), signer, onStatus);

/** Where the validator set stands, and `who` in it. */
export async function status(api, who) {
  const [index, validators, queued, invulnerables, candidates, nextKeys] = await Promise.all([
    api.query.session.currentIndex(),
    api.query.session.validators(),
    api.query.session.queuedKeys(),
    api.query.collatorSelection.invulnerables(),
    api.query.collatorSelection.candidateList(),
    who ? api.query.session.nextKeys(who) : Promise.resolve(null),
  ]);
  const list = (v) => v.map((a) => a.toString());
  const out = {
    session: index.toNumber(),
    validators: list(validators),
    queued: queued.map(([v]) => v.toString()),
    invulnerables: list(invulnerables),
    candidates: candidates.map((c) => ({ who: c.who.toString(), deposit: c.deposit.toString() })),
  };
  if (who) {
    out.account = {
      who,
      validator: out.validators.includes(who),
      queued: out.queued.includes(who),
      invulnerable: out.invulnerables.includes(who),
      candidate: out.candidates.some((c) => c.who === who),
      keys: nextKeys.isSome ? nextKeys.unwrap().toHex() : null,
    };
  }
  return out;
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      node: { type: 'string', default: process.env.COMPUTE_NODE ?? 'ws://127.0.0.1:9944' },
      'own-node': { type: 'string' },
      key: { type: 'string', default: process.env.COMPUTE_KEY },
    },
  });
  const [command] = positionals;
  if (!command) throw new Error('usage: validator.mjs [--node URL] [--own-node URL] [--key URI] <join|leave|purge-keys|status>');
  const needKey = () => {
    if (!values.key) throw new Error('give the validator account with --key (e.g. //Eve) or COMPUTE_KEY');
    return keyFrom(values.key);
  };
  const progress = (s) => process.stderr.write(`  ${s}\n`);
  const api = await connect(values.node);
  try {
    let out;
    switch (command) {
      case 'join': {
        const signer = needKey();
        const own = values['own-node'] ? await connect(values['own-node']) : api;
        try {
          const generated = await rotateKeys(own, signer.address);
          process.stderr.write(`  new session keys ${generated.keys}\n`);
          await join(api, signer, generated, progress);
          out = { joined: signer.address, keys: generated.keys };
        } finally {
          if (own !== api) await own.disconnect();
        }
        break;
      }
      case 'leave':
        await leave(api, needKey(), progress);
        out = { left: needKey().address };
        break;
      case 'purge-keys':
        await purgeKeys(api, needKey(), progress);
        out = { purged: needKey().address };
        break;
      case 'status':
        out = await status(api, values.key ? needKey().address : undefined);
        break;
      default:
        throw new Error(`unknown command ${command}`);
    }
    console.log(JSON.stringify(out, null, 2));
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
