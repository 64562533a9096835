// The receipt checks and the protocol encoding, in Node (no chain needed): every tampering a
// worker could try is refused, wallet-wrapped and non-sr25519 signatures are accepted as the
// chain accepts them, and local storage stays bounded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Keyring } from '@polkadot/keyring';
import { cryptoWaitReady } from '@polkadot/util-crypto';
import { u8aToHex, u8aConcat, stringToU8a } from '@polkadot/util';
import {
  encodeVoucher, encodeReceipt, receiptPayload, voucherPayload, encodeSignature, decodeSignedReceipt,
  verifyPayload, requestHash, responseHash, blake2, fee,
} from '../../src/protocol.js';
import { verifyReceipt, ReceiptStore, MAX_KEPT, MAX_PAIRS, keptEntry } from '../../src/receipts.js';

await cryptoWaitReady();
const sr = new Keyring({ type: 'sr25519', ss58Format: 42 });
const alice = sr.addFromUri('//Alice');
const bob = sr.addFromUri('//Bob');
const eve = sr.addFromUri('//Eve');
const genesis = u8aToHex(new Uint8Array(32).fill(7));
const text = 'Hello there.';
const proof = (() => { const p = new Uint8Array(5 + 3 * 20); p[0] = 1; p[1] = 3; return p; })();
const service = { inputPrice: 2n, outputPrice: 10n, priceVersion: 0, modelHash: u8aToHex(new Uint8Array(32).fill(9)) };
const voucher = {
  user: alice.address, provider: bob.address, serviceId: 0, priceVersion: 0, nonce: 4n,
  requestHash: requestHash('{"x":1}'), spent: 50n, cap: 1000n,
};
function receipt(over = {}) {
  return {
    user: alice.address, provider: bob.address, serviceId: 0, nonce: 4n,
    requestHash: voucher.requestHash, responseHash: responseHash(text), proofHash: blake2(proof),
    modelHash: service.modelHash, inputTokens: 10n, outputTokens: 3n, fee: 50n, total: 100n, ...over,
  };
}
const sign = (r, pair = bob, g = genesis) => u8aToHex(u8aConcat(encodeReceipt(r), encodeSignature(pair.type, pair.sign(receiptPayload(r, g)))));
const check = (signedHex, extra = {}) => verifyReceipt({ signedHex, voucher, genesis, service, previous: 50n, text, proofHex: u8aToHex(proof), ...extra });

test('layouts are the protocol\'s fixed widths', () => {
  assert.equal(encodeVoucher(voucher).length, 144);
  assert.equal(encodeReceipt(receipt()).length, 252);
  const p = voucherPayload(voucher, genesis);
  assert.equal(new TextDecoder().decode(p.subarray(0, 18)), 'compute/voucher/v1');
  assert.equal(p.length, 18 + 32 + 144);
  // Little-endian integers in field order: nonce at 72, spent at 112, cap at 128.
  const v = encodeVoucher(voucher);
  assert.equal(v[72], 4);
  assert.equal(v[112], 50);
  assert.deepEqual([...v.subarray(128, 131)], [0xe8, 0x03, 0]);
  assert.equal(fee(10n, 3n, 2n, 10n), 50n);
  assert.equal(fee(1n, 0n, (1n << 128n) - 1n, 0n), (1n << 128n) - 1n);
  assert.equal(fee(2n, 0n, (1n << 128n) - 1n, 0n), null);
});

test('an honest receipt verifies and round-trips', () => {
  const r = check(sign(receipt()));
  assert.equal(r.ok, true, r.reason);
  assert.equal(r.receipt.total, 100n);
  assert.equal(r.receipt.provider, bob.address);
});

test('every tampering is refused with its reason', () => {
  const bad = (hex, re, extra) => {
    const r = check(hex, extra);
    assert.equal(r.ok, false);
    assert.match(r.reason, re);
  };
  bad(sign(receipt(), eve), /signature does not verify/);
  bad(sign(receipt(), bob, u8aToHex(new Uint8Array(32))), /signature does not verify/);
  const flipped = sign(receipt());
  bad(flipped.slice(0, -4) + (flipped.slice(-4) === 'ffff' ? '0000' : 'ffff'), /signature does not verify/);
  bad(sign(receipt({ provider: eve.address }), eve), /names provider/);
  bad(sign(receipt({ user: eve.address })), /for user/);
  bad(sign(receipt({ nonce: 5n })), /nonce 5/);
  bad(sign(receipt({ serviceId: 1 })), /service 1/);
  bad(sign(receipt({ requestHash: requestHash('other') })), /request hash/);
  bad(sign(receipt({ fee: 60n, total: 110n })), /on-chain prices/);
  bad(sign(receipt({ fee: 50n, total: 101n })), /previous total/);
  bad(sign(receipt()), /cap/, { voucher: { ...voucher, cap: 49n } });
  bad(sign(receipt({ responseHash: responseHash('else') })), /response hash/);
  bad(sign(receipt()), /response hash/, { text: `${text}!` });
  bad(sign(receipt({ modelHash: u8aToHex(new Uint8Array(32).fill(1)) })), /other weights/);
  bad(sign(receipt()), /no activation proof/, { proofHex: null });
  bad(sign(receipt({ proofHash: blake2(new Uint8Array(3)) })), /proof_hash/);
  bad(sign(receipt({ outputTokens: 4n, fee: 60n, total: 110n })), /cover the tokens/, {});
  bad(sign(receipt()) + '00', /wrong length/);
  bad('nonsense', /not 0x hex/);
  bad(sign(receipt()), /changed its prices/, { service: { ...service, priceVersion: 1 } });
});

test('a fee-0 refusal only carries the total forward', () => {
  const zero = receipt({ responseHash: new Uint8Array(32), proofHash: new Uint8Array(32), modelHash: new Uint8Array(32), inputTokens: 0n, outputTokens: 0n, fee: 0n, total: 50n });
  assert.equal(check(sign(zero), { text: null, proofHex: null }).ok, true);
});

test('signatures: wallet-wrapped, ed25519 and ecdsa accepted as on chain; other schemes refused', () => {
  const payload = receiptPayload(receipt(), genesis);
  const wrapped = u8aConcat(stringToU8a('<Bytes>'), payload, stringToU8a('</Bytes>'));
  assert.ok(verifyPayload(payload, encodeSignature('sr25519', bob.sign(wrapped)), bob.address));
  for (const type of ['ed25519', 'ecdsa']) {
    const k = new Keyring({ type, ss58Format: 42 }).addFromUri('//Bob');
    const id = type === 'ecdsa' ? blake2(k.publicKey) : k.publicKey;
    assert.ok(verifyPayload(payload, encodeSignature(type, k.sign(payload)), id), type);
    // The variant byte decides the scheme: an ed25519 signature labelled sr25519 fails.
    if (type === 'ed25519') assert.ok(!verifyPayload(payload, encodeSignature('sr25519', k.sign(payload)), id));
  }
  const eth = new Keyring({ type: 'ethereum' }).addFromSeed(new Uint8Array(32).fill(3));
  assert.ok(!verifyPayload(payload, encodeSignature('ecdsa', eth.sign(payload)), blake2(eth.publicKey)));
});

test('decoding refuses trailing bytes and unknown signature kinds', () => {
  const hex = sign(receipt());
  assert.equal(decodeSignedReceipt(hex).kind, 'sr25519');
  assert.throws(() => decodeSignedReceipt(`${hex}00`));
  assert.throws(() => decodeSignedReceipt(hex.slice(0, 2 + 252 * 2) + '07' + hex.slice(2 + 253 * 2)));
});

test('local storage is bounded per pair and in pairs', () => {
  const mem = new Map();
  const storage = {
    get length() { return mem.size; },
    key: (i) => [...mem.keys()][i] ?? null,
    getItem: (k) => (mem.has(k) ? mem.get(k) : null),
    setItem: (k, v) => mem.set(k, String(v)),
    removeItem: (k) => mem.delete(k),
  };
  const store = new ReceiptStore(storage);
  const st = store.load(genesis, alice.address, bob.address);
  for (let i = 0; i < MAX_KEPT + 20; i++) st.receipts.push(keptEntry({ receipt: null, signedHex: 'x'.repeat(2000), ok: false, reason: 'r'.repeat(1000), kind: 'chat' }));
  store.save(genesis, alice.address, bob.address, st);
  const back = store.load(genesis, alice.address, bob.address);
  assert.equal(back.receipts.length, MAX_KEPT);
  assert.equal(back.receipts[0].signed, null, 'oversized signed bytes are not kept');
  assert.equal(back.receipts[0].reason.length, 300);
  for (let i = 0; i < MAX_PAIRS + 10; i++) store.save(genesis, alice.address, `p${i}`, store.load(genesis, alice.address, `p${i}`));
  assert.ok(store.pairs().length <= MAX_PAIRS + 1);
  storage.setItem('compute-web:v1:g:u:p', '{not json');
  assert.equal(store.load('g', 'u', 'p').total, 0n);
});
