// Every receipt a worker sends is checked here, in the browser, before it counts; the worker is
// untrusted. The checks are those of the CLI (`client/src/wire.rs` check_receipt,
// docs/protocol.md §9): the provider's signature on this chain, the fields echo our voucher,
// the fee follows the on-chain prices and stays under the cap, the running total continues
// from the last verified total, the response hash is the text we received, and the activation
// proof is the one the receipt commits to. A receipt that fails marks the provider distrusted:
// no further voucher is signed for it until the user says otherwise.
//
// The verified state (nonce, total, recent receipts) is kept in localStorage per
// (chain, user, provider), bounded: the last MAX_KEPT receipts per pair, without proofs.

import {
  decodeSignedReceipt, receiptPayload, verifyPayload, fee as feeFor, responseHash, blake2,
  proofTokens, hexToU8a, u8aToHex, u8aEq, ZERO_HASH, accountBytes,
} from './protocol.js';

/** Receipts kept per (user, provider) in local storage. */
export const MAX_KEPT = 50;
/** Pairs kept in local storage: the least recently used beyond this are dropped. */
export const MAX_PAIRS = 64;
const PREFIX = 'compute-web:v1:';

const sameAccount = (a, b) => {
  try {
    return u8aEq(accountBytes(a), accountBytes(b));
  } catch {
    return false;
  }
};

/**
 * Check `signedHex` (the receipt's `signed` field) against what we sent and received.
 *   voucher   the voucher we signed (user, provider, serviceId, nonce, requestHash, cap, ...)
 *   genesis   the chain's genesis hash (hex)
 *   service   the service as on chain now ({inputPrice, outputPrice, priceVersion, modelHash})
 *   previous  the last verified total (BigInt)
 *   text      the response text received (chat), or null for an ack
 *   proofHex  the activation proof sent with the receipt, if any
 * Returns {ok: true, receipt} or {ok: false, reason, receipt?}. Never throws.
 */
export function verifyReceipt({ signedHex, voucher, genesis, service, previous, text, proofHex }) {
  let decoded;
  try {
    decoded = decodeSignedReceipt(signedHex);
  } catch (e) {
    return { ok: false, reason: `unreadable receipt: ${e.message}` };
  }
  const r = decoded.receipt;
  const fail = (reason) => ({ ok: false, reason, receipt: r });
  if (!sameAccount(r.provider, voucher.provider)) {
    return fail(`receipt names provider ${r.provider}, not the one we paid`);
  }
  if (!verifyPayload(receiptPayload(r, genesis), decoded.multiSig, voucher.provider)) {
    return fail('the receipt signature does not verify for the provider on this chain');
  }
  if (!sameAccount(r.user, voucher.user)) return fail(`receipt is for user ${r.user}`);
  if (r.nonce !== BigInt(voucher.nonce)) return fail(`receipt is for nonce ${r.nonce}, not ${voucher.nonce}`);
  if (r.serviceId !== voucher.serviceId) return fail(`receipt is for service ${r.serviceId}`);
  if (r.requestHash !== u8aToHex(voucher.requestHash)) {
    return fail('the receipt answers another request (request hash)');
  }
  if (r.fee !== 0n) {
    if (service.priceVersion !== voucher.priceVersion) {
      return fail('the service changed its prices since the voucher was signed');
    }
    const expected = feeFor(r.inputTokens, r.outputTokens, service.inputPrice, service.outputPrice);
    if (expected !== r.fee) {
      return fail(`fee ${r.fee} is not ${r.inputTokens} × ${service.inputPrice} + ` +
        `${r.outputTokens} × ${service.outputPrice} = ${expected} at the on-chain prices`);
    }
  }
  if (r.fee > BigInt(voucher.cap)) return fail(`fee ${r.fee} exceeds the cap ${voucher.cap}`);
  if (r.total !== previous + r.fee) {
    return fail(`total ${r.total} is not the previous total ${previous} + fee ${r.fee}`);
  }
  if (r.fee !== 0n) {
    if (text == null || r.responseHash !== u8aToHex(responseHash(text))) {
      return fail('the response hash is not the hash of the text received');
    }
    if (service.modelHash && service.modelHash !== u8aToHex(ZERO_HASH) &&
        r.modelHash !== service.modelHash) {
      return fail('the receipt names other weights than the service commits to on chain');
    }
  } else if (r.responseHash !== u8aToHex(ZERO_HASH) &&
      (text == null || r.responseHash !== u8aToHex(responseHash(text)))) {
    return fail('a fee-0 receipt with a response hash that is neither zero nor the text');
  }
  if (r.outputTokens > 0n) {
    // A chat receipt billing output tokens comes with its activation proof: the bytes the
    // receipt commits to, covering exactly the tokens billed. (Whether the activations are
    // right is `compute audit`'s check, against the weights.)
    if (!proofHex) return fail('no activation proof came with a receipt that bills output tokens');
    let bytes;
    try {
      bytes = hexToU8a(proofHex);
    } catch {
      return fail('the activation proof is not hex');
    }
    if (u8aToHex(blake2(bytes)) !== r.proofHash) {
      return fail('the activation proof does not hash to the receipt\'s proof_hash');
    }
    try {
      if (BigInt(proofTokens(bytes)) !== r.outputTokens) {
        return fail('the activation proof does not cover the tokens billed');
      }
    } catch (e) {
      return fail(e.message);
    }
  }
  return { ok: true, receipt: r };
}

/** Local storage of the verified state, per (genesis, user, provider). */
export class ReceiptStore {
  constructor(storage = globalThis.localStorage) {
    this.storage = storage;
  }

  key(genesis, user, provider) {
    return `${PREFIX}${genesis}:${user}:${provider}`;
  }

  /** {nonce, total, distrusted, receipts: [...]}: BigInts for nonce and total. */
  load(genesis, user, provider) {
    let raw = null;
    try {
      raw = JSON.parse(this.storage.getItem(this.key(genesis, user, provider)) ?? 'null');
    } catch {
      raw = null;
    }
    return {
      nonce: BigInt(raw?.nonce ?? 0),
      total: BigInt(raw?.total ?? 0),
      distrusted: typeof raw?.distrusted === 'string' ? raw.distrusted : null,
      receipts: Array.isArray(raw?.receipts) ? raw.receipts.slice(-MAX_KEPT) : [],
    };
  }

  save(genesis, user, provider, state) {
    const value = JSON.stringify({
      nonce: state.nonce.toString(),
      total: state.total.toString(),
      distrusted: state.distrusted,
      receipts: state.receipts.slice(-MAX_KEPT),
      used: Date.now(),
    });
    this.prune();
    try {
      this.storage.setItem(this.key(genesis, user, provider), value);
    } catch {
      // Full: drop the oldest pairs and try once more.
      this.prune(Math.floor(MAX_PAIRS / 2));
      this.storage.setItem(this.key(genesis, user, provider), value);
    }
  }

  /** All kept pairs, most recently used first. */
  pairs() {
    const out = [];
    for (let i = 0; i < this.storage.length; i++) {
      const k = this.storage.key(i);
      if (!k?.startsWith(PREFIX)) continue;
      const [genesis, user, provider] = k.slice(PREFIX.length).split(':');
      let used = 0;
      try {
        used = JSON.parse(this.storage.getItem(k)).used ?? 0;
      } catch { /* unreadable: oldest */ }
      out.push({ key: k, genesis, user, provider, used });
    }
    return out.sort((a, b) => b.used - a.used);
  }

  prune(keep = MAX_PAIRS) {
    for (const p of this.pairs().slice(keep)) this.storage.removeItem(p.key);
  }
}

/** What is kept of one receipt: its verdict and the signed bytes (a dispute needs them). */
export function keptEntry({ receipt, signedHex, ok, reason, kind }) {
  return {
    kind,
    nonce: receipt ? receipt.nonce.toString() : null,
    fee: receipt ? receipt.fee.toString() : null,
    total: receipt ? receipt.total.toString() : null,
    inputTokens: receipt ? receipt.inputTokens.toString() : null,
    outputTokens: receipt ? receipt.outputTokens.toString() : null,
    ok,
    reason: reason ? String(reason).slice(0, 300) : null,
    signed: typeof signedHex === 'string' && signedHex.length <= 1024 ? signedHex : null,
    at: Date.now(),
  };
}
