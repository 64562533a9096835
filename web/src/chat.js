// The Chat page: pick a chat service, talk to its worker with streaming. Each request carries a
// voucher signed here (dev key, or the extension's signRaw); each answer's receipt is verified
// here (receipts.js) before its total counts, and kept in local storage. The running cost, a
// closing ack and the receipt verdicts are shown. The model's text is put on the page as text.

import { el, fill } from './dom.js';
import { formatUnits, parseUnits, short } from './format.js';
import { endpointBase } from './explorer.js';
import { verifyReceipt, keptEntry } from './receipts.js';
import {
  voucherPayload, signedVoucherHex, requestHash, ZERO_HASH, VOUCHER_HEADER,
} from './protocol.js';

/** Longest conversation sent (messages); older turns are dropped from the request. */
const MAX_TURNS = 12;
/** Longest error text shown from a worker. */
const MAX_ERROR = 300;
const REQUEST_TIMEOUT_MS = 180_000;

const untrusted = (s) => String(s ?? '').replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, '?').slice(0, MAX_ERROR);

export function chatPage(app) {
  const { chain, store } = app;
  const serviceSel = el('select', { id: 'chat-service', onchange: () => { messages = []; drawLog(); drawCost(); } });
  const cap = el('input', { id: 'chat-cap', value: '0.01', size: 6, inputMode: 'decimal' });
  const maxTokens = el('input', { id: 'chat-max-tokens', value: '48', size: 4, inputMode: 'numeric' });
  const prompt = el('textarea', { id: 'chat-input', rows: 3, placeholder: 'Ask something…' });
  const send = el('button', { id: 'chat-send', onclick: () => ask() }, 'Send');
  const ack = el('button', { id: 'chat-ack', onclick: () => closeWithAck() }, 'Close with ack');
  const log = el('div', { id: 'chat-log', className: 'chat-log', attrs: { 'aria-live': 'polite' } });
  const cost = el('div', { id: 'chat-cost', className: 'status' });
  const notice = el('div', { id: 'chat-notice', className: 'status' });
  let messages = []; // {role, content, verdict?}
  let sessionCost = 0n;
  let busy = false;

  const current = () => {
    const [provider, id] = (serviceSel.value || '/').split('/');
    return chain.service(provider, Number(id));
  };

  function drawServices() {
    const keep = serviceSel.value;
    const chats = [...chain.services.values()].filter((s) => s.kind === 'chat');
    fill(serviceSel, chats.map((s) => el('option', { value: `${s.provider}/${s.serviceId}`, selected: `${s.provider}/${s.serviceId}` === keep },
      `${s.model} — ${short(s.provider)} #${s.serviceId} — ${s.url}`)));
    drawCost();
  }

  function drawLog() {
    fill(log, messages.map((m) => el('div', { className: `msg ${m.role}` },
      el('div', { className: 'who' }, m.role === 'user' ? 'You' : 'Model'),
      el('div', { className: 'text' }, m.content),
      m.verdict ? el('div', { className: `verdict ${m.verdict.ok ? 'receipt-ok' : 'receipt-bad'}` }, m.verdict.text) : null)));
    log.scrollTop = log.scrollHeight;
  }

  function drawCost() {
    const s = current();
    const a = app.account;
    if (!s || !a) return fill(cost, 'choose an account and a service');
    const st = store.load(chain.genesis, a.address, s.provider);
    const esc = app.escrows?.get(s.provider);
    fill(cost,
      el('span', { id: 'running-cost' }, `this session ${formatUnits(sessionCost)} unit`), ' · ',
      el('span', { id: 'verified-total' }, `verified total with this provider ${formatUnits(st.total)} unit`), ' · ',
      `nonce ${st.nonce}`, ' · ',
      esc ? `escrow ${formatUnits(esc.balance)} unit` : 'no escrow with this provider',
      st.distrusted ? el('span', { className: 'receipt-bad', id: 'distrusted' }, ` · DISTRUSTED: ${st.distrusted}`) : null,
      st.distrusted ? el('button', { id: 'trust-again', className: 'small', onclick: () => { st.distrusted = null; store.save(chain.genesis, a.address, s.provider, st); drawCost(); } }, 'trust again') : null);
  }

  function setNotice(text, kind = '') {
    notice.className = `status ${kind}`;
    fill(notice, text);
  }

  /** The next voucher's nonce and spent, from the verified state and the chain. */
  async function prepare(s, a) {
    const st = store.load(chain.genesis, a.address, s.provider);
    if (st.distrusted) throw new Error(`provider distrusted: ${st.distrusted}`);
    const esc = await chain.escrow(a.address, s.provider);
    if (esc && esc.settledNonce > st.nonce) {
      // The chain settled vouchers this browser never saw answered (another client): continue
      // the nonce from the chain, but the total only from verified receipts. A settled total
      // above it is an over-claim to dispute.
      if (esc.settledTotal > st.total) {
        st.distrusted = `the chain settled ${formatUnits(esc.settledTotal)} but receipts verified here total ${formatUnits(st.total)}`;
        store.save(chain.genesis, a.address, s.provider, st);
        throw new Error(st.distrusted);
      }
      st.nonce = esc.settledNonce;
    }
    return st;
  }

  async function signVoucher(a, v) {
    const sig = await a.signRaw(voucherPayload(v, chain.genesis));
    return signedVoucherHex(v, sig);
  }

  /** Verify, record and show the receipt of our voucher `v`. */
  function settleReceipt(s, a, st, v, signedHex, text, proofHex, kind) {
    const result = verifyReceipt({ signedHex, voucher: v, genesis: chain.genesis, service: s, previous: st.total, text, proofHex });
    st.nonce = v.nonce; // the worker used the nonce either way
    if (result.ok) {
      st.total = result.receipt.total;
      sessionCost += result.receipt.fee;
    } else {
      st.distrusted = result.reason;
    }
    st.receipts.push({ ...keptEntry({ receipt: result.receipt, signedHex, ok: result.ok, reason: result.reason, kind }), provider: s.provider, serviceId: s.serviceId });
    store.save(chain.genesis, a.address, s.provider, st);
    drawCost();
    app.dispatchEvent(new CustomEvent('receipts'));
    const r = result.receipt;
    return result.ok
      ? { ok: true, text: `✓ receipt verified: nonce ${r.nonce}, ${r.inputTokens} in + ${r.outputTokens} out tokens, fee ${formatUnits(r.fee)}, total ${formatUnits(r.total)} unit` }
      : { ok: false, text: `✗ RECEIPT REJECTED: ${result.reason}` };
  }

  async function ask() {
    if (busy) return;
    const s = current();
    const a = app.account;
    const question = prompt.value.trim();
    if (!a) return setNotice('choose an account on the Account page first', 'error');
    if (!s) return setNotice('no chat service', 'error');
    if (!question) return;
    const base = endpointBase(s.url);
    if (!base) return setNotice('this service has no http(s) endpoint', 'error');
    busy = true;
    send.disabled = true;
    setNotice('signing the voucher…', 'pending');
    const reply = { role: 'assistant', content: '' };
    try {
      const st = await prepare(s, a);
      messages.push({ role: 'user', content: question });
      prompt.value = '';
      const body = new TextEncoder().encode(JSON.stringify({
        model: s.model,
        messages: messages.filter((m) => !m.failed).slice(-MAX_TURNS).map(({ role, content }) => ({ role, content })),
        stream: true,
        max_tokens: Math.max(1, Math.min(1024, Number(maxTokens.value) || 48)),
        temperature: 0,
      }));
      const v = {
        user: a.address, provider: s.provider, serviceId: s.serviceId, priceVersion: s.priceVersion,
        nonce: st.nonce + 1n, requestHash: requestHash(body), spent: st.total, cap: parseUnits(cap.value),
      };
      const header = await signVoucher(a, v);
      messages.push(reply);
      drawLog();
      setNotice(`streaming from ${base}…`, 'pending');
      const resp = await fetch(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', [VOUCHER_HEADER]: header },
        body,
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      let receipt = null;
      let proof = null;
      let error = null;
      if (!resp.ok || !(resp.headers.get('content-type') ?? '').includes('text/event-stream')) {
        const json = await resp.json().catch(() => null);
        error = json?.error ?? { message: `HTTP ${resp.status}` };
        receipt = error.receipt ?? json?.receipt ?? null;
        if (json?.choices?.[0]?.message?.content) reply.content = json.choices[0].message.content;
      } else {
        for await (const data of sseData(resp.body)) {
          if (data === '[DONE]') break;
          let obj;
          try {
            obj = JSON.parse(data);
          } catch {
            error = { message: 'the worker sent an unreadable event' };
            break;
          }
          if (obj.error) {
            error = obj.error;
            receipt = obj.error.receipt ?? receipt;
            break;
          }
          const piece = obj.choices?.[0]?.delta?.content;
          if (typeof piece === 'string' && piece) {
            reply.content += piece;
            drawLog();
          }
          if (obj.receipt) {
            receipt = obj.receipt;
            proof = obj.receipt.proof ?? null;
          }
        }
      }
      if (receipt?.signed) {
        reply.verdict = settleReceipt(s, a, st, v, receipt.signed, error ? null : reply.content, proof, error ? 'refusal' : 'chat');
      } else {
        reply.verdict = { ok: false, text: error ? 'no receipt (the nonce was not used)' : '✗ the answer ended without a receipt' };
      }
      if (error) {
        reply.failed = true;
        messages[messages.length - 2].failed = true;
        if (!reply.content) reply.content = `[${untrusted(error.code ?? 'error')}] ${untrusted(error.message)}`;
        setNotice(`the worker refused: ${untrusted(error.message)}`, 'error');
      } else {
        setNotice(reply.verdict.ok ? 'answer received and verified' : 'answer received, receipt REJECTED', reply.verdict.ok ? 'ok' : 'error');
      }
    } catch (e) {
      reply.failed = true;
      if (!reply.content) reply.content = `[error] ${untrusted(e.message)}`;
      setNotice(untrusted(e.message), 'error');
    } finally {
      busy = false;
      send.disabled = false;
      drawLog();
    }
  }

  /** The closing ack: a voucher with cap 0 and no request that confirms the verified total. */
  /** One voucher at a time: an ack racing a chat would sign the same nonce twice. */
  async function closeWithAck() {
    if (busy) return setNotice('wait for the answer in progress, then close', 'error');
    busy = true;
    try {
      await sendAck();
    } finally {
      busy = false;
    }
  }

  async function sendAck() {
    const s = current();
    const a = app.account;
    if (!s || !a) return setNotice('choose an account and a service', 'error');
    const base = endpointBase(s.url);
    try {
      const st = await prepare(s, a);
      const v = {
        user: a.address, provider: s.provider, serviceId: s.serviceId, priceVersion: s.priceVersion,
        nonce: st.nonce + 1n, requestHash: ZERO_HASH, spent: st.total, cap: 0n,
      };
      const header = await signVoucher(a, v);
      setNotice('sending the ack…', 'pending');
      const resp = await fetch(`${base}/v1/ack`, { method: 'POST', headers: { [VOUCHER_HEADER]: header } });
      const json = await resp.json().catch(() => null);
      const r = json?.receipt ?? json?.error?.receipt;
      if (!resp.ok && !r) return setNotice(`ack refused: ${untrusted(json?.error?.message ?? resp.status)}`, 'error');
      const verdict = settleReceipt(s, a, st, v, r?.signed, null, null, 'ack');
      setNotice(`ack: ${verdict.text}`, verdict.ok ? 'ok' : 'error');
    } catch (e) {
      setNotice(untrusted(e.message), 'error');
    }
  }

  chain.addEventListener('services', drawServices);
  app.addEventListener('account', drawCost);
  app.addEventListener('escrows', drawCost);
  prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      ask();
    }
  });
  drawServices();

  return el('section', { id: 'page-chat' },
    el('h2', {}, 'Chat'),
    el('div', { className: 'row' }, 'Service ', serviceSel),
    el('div', { className: 'row' }, 'Cap per request (unit) ', cap, ' max tokens ', maxTokens, ack),
    cost,
    log,
    el('div', { className: 'row' }, prompt, send),
    notice);
}

/** The `data:` payloads of a server-sent event stream. */
async function* sseData(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (data) yield data;
    }
  }
}
