// The protocol's signed messages, byte for byte (docs/protocol.md §1, primitives/src/lib.rs):
// SCALE layouts of Voucher (144 bytes) and Receipt (252 bytes), the signing payload
// `tag ++ genesis_hash ++ SCALE(m)`, MultiSignature, and the hashes a client checks.
// The layouts are fixed-width, so they are written out here rather than looked up: this module
// is also used by the fake worker of the tests, in Node, where no chain metadata is at hand.
// Any byte out of place shows at once: the real worker refuses the voucher and the real
// receipts fail their signature check.

import { u8aConcat, u8aToHex, hexToU8a, u8aEq, stringToU8a, isHex } from '@polkadot/util';
import {
  blake2AsU8a, decodeAddress, encodeAddress, ed25519Verify, sr25519Verify, secp256k1Verify,
} from '@polkadot/util-crypto';

export const VOUCHER_TAG = stringToU8a('compute/voucher/v1');
export const RECEIPT_TAG = stringToU8a('compute/receipt/v3');
export const AUTH_TAG = stringToU8a('compute/auth/v1');
export const VOUCHER_HEADER = 'x-compute-voucher';
export const RECEIPT_HEADER = 'x-compute-receipt';
export const ZERO_HASH = new Uint8Array(32);
/** SS58 prefix of the dev chain (generic Substrate). */
export const SS58 = 42;

const U128_MAX = (1n << 128n) - 1n;
const U64_MAX = (1n << 64n) - 1n;

/** Little-endian fixed-width unsigned integer. */
function uint(value, bytes, max) {
  const v = BigInt(value);
  if (v < 0n || v > max) throw new Error(`${value} does not fit in ${bytes * 8} bits`);
  const out = new Uint8Array(bytes);
  let x = v;
  for (let i = 0; i < bytes; i++) {
    out[i] = Number(x & 0xffn);
    x >>= 8n;
  }
  return out;
}
const u32 = (v) => uint(v, 4, 0xffffffffn);
const u64 = (v) => uint(v, 8, U64_MAX);
const u128 = (v) => uint(v, 16, U128_MAX);

function readUint(bytes, at, width) {
  let v = 0n;
  for (let i = width - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[at + i]);
  return v;
}

/** 32-byte account id from an SS58 address, a hex public key or raw bytes. */
export function accountBytes(a) {
  if (a instanceof Uint8Array) {
    if (a.length !== 32) throw new Error('an account id is 32 bytes');
    return a;
  }
  return decodeAddress(a);
}
const hash32 = (h) => {
  const b = h instanceof Uint8Array ? h : hexToU8a(h);
  if (b.length !== 32) throw new Error('a hash is 32 bytes');
  return b;
};

/** SCALE of a Voucher: user, provider, service_id u32, price_version u32, nonce u64,
 * request_hash, spent u128, cap u128. */
export function encodeVoucher(v) {
  return u8aConcat(
    accountBytes(v.user), accountBytes(v.provider), u32(v.serviceId), u32(v.priceVersion),
    u64(v.nonce), hash32(v.requestHash), u128(v.spent), u128(v.cap));
}

/** SCALE of a Receipt (252 bytes). */
export function encodeReceipt(r) {
  return u8aConcat(
    accountBytes(r.user), accountBytes(r.provider), u32(r.serviceId), u64(r.nonce),
    hash32(r.requestHash), hash32(r.responseHash), hash32(r.proofHash), hash32(r.modelHash),
    u64(r.inputTokens), u64(r.outputTokens), u128(r.fee), u128(r.total));
}

/** `tag ++ genesis ++ SCALE(m)`: the bytes a key signs (no hash, no wrapping). */
export const signingPayload = (tag, genesis, encoded) => u8aConcat(tag, hash32(genesis), encoded);
export const voucherPayload = (v, genesis) => signingPayload(VOUCHER_TAG, genesis, encodeVoucher(v));
export const receiptPayload = (r, genesis) => signingPayload(RECEIPT_TAG, genesis, encodeReceipt(r));

const SIG_KINDS = ['ed25519', 'sr25519', 'ecdsa'];
const SIG_LEN = { ed25519: 64, sr25519: 64, ecdsa: 65 };

/** SCALE MultiSignature: variant byte (0 ed25519, 1 sr25519, 2 ecdsa) then the signature. */
export function encodeSignature(kind, sig) {
  const i = SIG_KINDS.indexOf(kind);
  if (i < 0 || sig.length !== SIG_LEN[kind]) throw new Error(`not a ${kind} signature`);
  return u8aConcat(new Uint8Array([i]), sig);
}

/** SCALE SignedVoucher as `0x` hex: the `x-compute-voucher` header. */
export const signedVoucherHex = (v, multiSig) => u8aToHex(u8aConcat(encodeVoucher(v), multiSig));

/** Decode a SCALE SignedReceipt (hex), refusing any other length (trailing bytes included). */
export function decodeSignedReceipt(hex) {
  if (typeof hex !== 'string' || !isHex(hex)) throw new Error('the receipt is not 0x hex');
  const b = hexToU8a(hex);
  if (b.length < 253) throw new Error('the receipt is too short');
  let at = 0;
  const take = (n) => { const s = b.subarray(at, at + n); at += n; return s; };
  const receipt = {
    user: encodeAddress(take(32), SS58),
    provider: encodeAddress(take(32), SS58),
    serviceId: Number(readUint(take(4), 0, 4)),
    nonce: readUint(take(8), 0, 8),
    requestHash: u8aToHex(take(32)),
    responseHash: u8aToHex(take(32)),
    proofHash: u8aToHex(take(32)),
    modelHash: u8aToHex(take(32)),
    inputTokens: readUint(take(8), 0, 8),
    outputTokens: readUint(take(8), 0, 8),
    fee: readUint(take(16), 0, 16),
    total: readUint(take(16), 0, 16),
  };
  const kind = SIG_KINDS[b[at]];
  if (!kind) throw new Error('unknown signature kind');
  at += 1;
  if (b.length !== at + SIG_LEN[kind]) throw new Error('the receipt has a wrong length');
  const multiSig = b.subarray(at - 1);
  return { receipt, kind, multiSig };
}

/** Whether `multiSig` (SCALE MultiSignature) by `signer` verifies over `payload`, raw or as
 * `<Bytes>payload</Bytes>` (what browser wallets sign), as `verify_payload` on chain. Strict
 * like the chain's `MultiSignature::verify`: the variant byte decides the scheme (polkadot.js's
 * `signatureVerify` would also try the others, and Ethereum-style ecdsa, which the chain does
 * not accept), and an ecdsa signer is the blake2-256 of the recovered public key. */
export function verifyPayload(payload, multiSig, signer) {
  const account = accountBytes(signer);
  const kind = SIG_KINDS[multiSig[0]];
  const sig = multiSig.subarray(1);
  if (!kind || sig.length !== SIG_LEN[kind]) return false;
  const check = (msg) => {
    try {
      if (kind === 'sr25519') return sr25519Verify(msg, sig, account);
      if (kind === 'ed25519') return ed25519Verify(msg, sig, account);
      return secp256k1Verify(msg, sig, account, 'blake2');
    } catch {
      return false;
    }
  };
  return check(payload) ||
    check(u8aConcat(stringToU8a('<Bytes>'), payload, stringToU8a('</Bytes>')));
}

export const blake2 = (bytes) => blake2AsU8a(bytes, 256);
/** A voucher's `request_hash`: blake2-256 of the exact request body bytes. */
export const requestHash = (body) => blake2(body instanceof Uint8Array ? body : stringToU8a(body));
/** A chat receipt's `response_hash`: blake2-256 of the UTF-8 text. */
export const responseHash = (text) => blake2(stringToU8a(text));

/** `input × input_price + output × output_price`, or null above u128 (checked, as on chain). */
export function fee(inputTokens, outputTokens, inputPrice, outputPrice) {
  const f = BigInt(inputTokens) * BigInt(inputPrice) + BigInt(outputTokens) * BigInt(outputPrice);
  return f > U128_MAX ? null : f;
}

/** Read a version-1 activation proof header: `version u8, n u32, n × u32, n × 8 × u16`. */
export function proofTokens(bytes) {
  if (bytes.length < 5 || bytes[0] !== 1) throw new Error('the proof is not version 1');
  const n = Number(readUint(bytes, 1, 4));
  if (bytes.length !== 5 + n * (4 + 2 * 8)) throw new Error('the proof has a wrong length');
  return n;
}

export { u8aToHex, hexToU8a, u8aEq };
