// Who signs: accounts of the polkadot.js browser extension (and compatible wallets), and on a
// development chain the well-known dev accounts (//Alice ... //Ferdie), whose keys are public
// by design. Each account signs extrinsics (with progress to finality) and raw protocol
// payloads (vouchers). Extensions sign raw data wrapped as `<Bytes>…</Bytes>`, which the
// protocol accepts (docs/protocol.md §1).

import { Keyring } from '@polkadot/keyring';
import { cryptoWaitReady } from '@polkadot/util-crypto';
import { u8aToHex, hexToU8a } from '@polkadot/util';
import { web3Enable, web3Accounts, web3FromSource } from '@polkadot/extension-dapp';
import { encodeSignature } from './protocol.js';

export const DEV_NAMES = ['Alice', 'Bob', 'Charlie', 'Dave', 'Eve', 'Ferdie'];

/** The dev accounts, sr25519 from `//Name` (only offered on a development chain). */
export async function devAccounts() {
  await cryptoWaitReady();
  const keyring = new Keyring({ type: 'sr25519', ss58Format: 42 });
  return DEV_NAMES.map((name) => {
    const pair = keyring.addFromUri(`//${name}`);
    return {
      address: pair.address,
      name: `${name} (dev)`,
      source: 'dev',
      txSigner: pair,
      txOptions: {},
      /** A MultiSignature over the raw payload. */
      async signRaw(payload) {
        return encodeSignature('sr25519', pair.sign(payload));
      },
    };
  });
}

/** The extension's accounts; throws with a readable message when there is none. */
export async function extensionAccounts(appName = 'compute marketplace') {
  const extensions = await web3Enable(appName);
  if (!extensions.length) throw new Error('no polkadot.js extension answered (install it, or allow this site)');
  const accounts = await web3Accounts();
  if (!accounts.length) throw new Error('the extension has no account shared with this site');
  return Promise.all(accounts.map(async (a) => {
    const injected = await web3FromSource(a.meta.source);
    const type = a.type ?? 'sr25519';
    return {
      address: a.address,
      name: `${a.meta.name ?? 'account'} (${a.meta.source})`,
      source: 'extension',
      txSigner: a.address,
      txOptions: { signer: injected.signer },
      async signRaw(payload) {
        if (!injected.signer.signRaw) throw new Error('this extension cannot sign raw data');
        const { signature } = await injected.signer.signRaw({
          address: a.address, data: u8aToHex(payload), type: 'bytes',
        });
        const sig = hexToU8a(signature);
        // Extensions answer with the MultiSignature (type byte first) or the bare signature.
        if (sig.length === 65 && type !== 'ecdsa' && sig[0] <= 2) return sig;
        if (sig.length === 66) return sig;
        return encodeSignature(type, sig);
      },
    };
  }));
}

/**
 * Sign and submit `tx` as `account`; `onStatus(text)` sees each stage. Resolves at finality
 * with {blockHash, events}; rejects with the pallet's error name and docs when the call fails.
 */
export function submit(chain, tx, account, onStatus = () => {}) {
  return new Promise((resolve, reject) => {
    let unsub = () => {};
    let failed = null;
    tx.signAndSend(account.txSigner, account.txOptions, (result) => {
      const { status, events, dispatchError } = result;
      if (dispatchError && !failed) failed = new Error(chain.explain(dispatchError));
      if (status.isInBlock) onStatus(`in block ${status.asInBlock.toHex().slice(0, 10)}…, waiting for finality`);
      else if (!status.isFinalized) onStatus(status.type.toLowerCase());
      if (status.isInBlock && failed) {
        unsub();
        reject(failed);
      } else if (status.isFinalized) {
        unsub();
        if (failed) return reject(failed);
        onStatus(`finalized in ${status.asFinalized.toHex().slice(0, 10)}…`);
        resolve({
          blockHash: status.asFinalized.toHex(),
          events: events.filter(({ event }) => event.section === 'compute').map(({ event }) => event.method),
        });
      } else if (status.isDropped || status.isInvalid || status.isUsurped) {
        unsub();
        reject(new Error(`transaction ${status.type.toLowerCase()}`));
      }
    }).then((u) => { unsub = u; }, reject);
  });
}
