// A dishonest worker for the browser test: a real HTTP server that answers chat requests like
// compute-worker (SSE chunks, the receipt and its activation proof in the last chunk), replaying
// a real response text, but with a receipt tampered in one way per request, in turn:
//   bad-signature   the provider's signature with one byte flipped
//   wrong-signer    a valid signature, by another key than the registered provider's
//   fee-above-price the provider's valid signature over a fee above the on-chain prices
//   wrong-hash      the provider's valid signature over the hash of another text
// Everything else in each receipt is right, so each must be caught by its own check.

import { createServer } from 'node:http';
import { Keyring } from '@polkadot/keyring';
import { cryptoWaitReady } from '@polkadot/util-crypto';
import { u8aToHex, hexToU8a, u8aConcat } from '@polkadot/util';
import { encodeAddress } from '@polkadot/util-crypto';
import {
  receiptPayload, encodeReceipt, encodeSignature, fee as feeFor, responseHash, blake2, SS58,
} from '../src/protocol.js';

export const MODES = ['bad-signature', 'wrong-signer', 'fee-above-price', 'wrong-hash'];

/** Read the fields of a SCALE SignedVoucher (hex) that a receipt echoes. */
function readVoucher(hex) {
  const b = hexToU8a(hex);
  const le = (at, n) => {
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[at + i]);
    return v;
  };
  return {
    user: encodeAddress(b.subarray(0, 32), SS58),
    serviceId: Number(le(64, 4)),
    nonce: le(72, 8),
    requestHash: u8aToHex(b.subarray(80, 112)),
    spent: le(112, 16),
    cap: le(128, 16),
  };
}

/** A version-1 activation proof of `n` tokens (the values do not matter to the browser). */
function proof(n) {
  const out = new Uint8Array(5 + n * 20);
  out[0] = 1;
  new DataView(out.buffer).setUint32(1, n, true);
  return out;
}

/**
 * Start on `port`. `text` is the replayed answer; `prices` the on-chain {input, output};
 * `genesis` the chain's genesis hash. Returns {server, served: [mode...], close()}.
 */
export async function startFakeWorker({ port, genesis, text, prices, providerUri = '//Dave', forgerUri = '//Eve' }) {
  await cryptoWaitReady();
  const keyring = new Keyring({ type: 'sr25519', ss58Format: SS58 });
  const provider = keyring.addFromUri(providerUri);
  const forger = keyring.addFromUri(forgerUri);
  const served = [];
  const cors = {
    'access-control-allow-origin': '*',
    'access-control-allow-headers': 'content-type, x-compute-voucher, x-compute-auth',
    'access-control-allow-methods': 'GET, POST',
  };
  const server = createServer(async (req, res) => {
    if (req.method === 'OPTIONS') return res.writeHead(204, cors).end();
    if (req.url === '/health') {
      res.writeHead(200, { ...cors, 'content-type': 'application/json' });
      return res.end(JSON.stringify({ status: 'ok', provider: provider.address, genesis }));
    }
    if (req.url !== '/v1/chat/completions' || req.method !== 'POST') return res.writeHead(404, cors).end();
    for await (const _ of req); // the body: its hash is already in the voucher
    const v = readVoucher(req.headers['x-compute-voucher']);
    const mode = MODES[served.length % MODES.length];
    served.push(mode);
    const inputTokens = 10n;
    const outputTokens = 5n;
    let fee = feeFor(inputTokens, outputTokens, prices.input, prices.output);
    if (mode === 'fee-above-price') fee += prices.output; // one output token more than served
    const proofBytes = proof(Number(outputTokens));
    const receipt = {
      user: v.user, provider: provider.address, serviceId: v.serviceId, nonce: v.nonce,
      requestHash: v.requestHash,
      responseHash: responseHash(mode === 'wrong-hash' ? `${text} (not what was sent)` : text),
      proofHash: blake2(proofBytes), modelHash: new Uint8Array(32),
      inputTokens, outputTokens, fee, total: v.spent + fee,
    };
    const payload = receiptPayload(receipt, genesis);
    let sig = encodeSignature('sr25519', (mode === 'wrong-signer' ? forger : provider).sign(payload));
    if (mode === 'bad-signature') sig[10] ^= 0xff;
    const signed = u8aToHex(u8aConcat(encodeReceipt(receipt), sig));
    res.writeHead(200, { ...cors, 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const chunk = (o) => res.write(`data: ${JSON.stringify(o)}\n\n`);
    const base = { id: 'fake', object: 'chat.completion.chunk', created: 0, model: 'fake' };
    chunk({ ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' } }] });
    for (const piece of text.match(/.{1,12}/gs) ?? []) {
      chunk({ ...base, choices: [{ index: 0, delta: { content: piece } }] });
    }
    chunk({
      ...base,
      choices: [{ index: 0, delta: {}, finish_reason: 'stop' }],
      receipt: {
        user: v.user, provider: provider.address, service_id: v.serviceId, nonce: Number(v.nonce),
        fee: fee.toString(), total: receipt.total.toString(), signed, proof: u8aToHex(proofBytes),
      },
    });
    res.end('data: [DONE]\n\n');
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { server, served, provider: provider.address, close: () => new Promise((r) => server.close(r)) };
}
