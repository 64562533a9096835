// The node connection and the live chain state the pages show. Everything comes from the
// chain's own metadata (calls, storage, events, errors): no type definitions are written here,
// so a runtime upgrade that keeps the pallet's shapes needs no change. Live means subscribed:
// new heads, finalized heads, the validator set, provider records and each new block's events
// are pushed by the node; the service list is re-read when a block carries a service event.

import { ApiPromise, WsProvider } from '@polkadot/api';
import { u8aToHex, u8aToString } from '@polkadot/util';

/** Recent settlements and disputes kept in memory. */
const MAX_EVENTS = 200;
/** Blocks scanned back for settlement and dispute history at start. */
const HISTORY_BLOCKS = 100;

const SETTLEMENT_EVENTS = new Set(['ClaimSettled', 'ClaimPartiallySettled', 'ClaimRejected', 'BatchSettled', 'EarningsReleased']);
const DISPUTE_EVENTS = new Set(['DisputeWon', 'ChallengeOpened', 'ChallengeEnded']);
const SERVICE_EVENTS = new Set(['ServiceRegistered', 'ServiceUpdated', 'ServiceRemoved']);

/** An event's fields by name, each as a string (amounts stay exact). */
function fields(event) {
  const names = event.data.names ?? [];
  return Object.fromEntries(event.data.map((v, i) => [names[i] ?? String(i), v.toString()]));
}

/** Bytes from the chain as text; invalid UTF-8 is replaced, never interpreted. */
const text = (bytes) => u8aToString(bytes.toU8a(true));

export class Chain extends EventTarget {
  constructor() {
    super();
    this.api = null;
    this.url = null;
    this.genesis = null;
    this.isDev = false;
    this.chainName = '';
    this.best = null;
    this.finalized = null;
    this.validators = [];
    /** key `${provider}/${serviceId}` -> service */
    this.services = new Map();
    /** provider -> statistics */
    this.providers = new Map();
    this.settlements = [];
    this.disputes = [];
    this.unsubs = [];
    this.providerUnsubs = [];
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Connect to `url`; rejects after `timeoutMs` when nothing answers. */
  async connect(url, timeoutMs = 15_000) {
    this.url = url;
    const provider = new WsProvider(url, 1000);
    let timer;
    this.api = await Promise.race([
      ApiPromise.create({ provider, noInitWarn: true, throwOnConnect: false }),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`cannot reach the node at ${url}`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
    const api = this.api;
    if (!api.tx.compute || !api.query.compute) throw new Error('this chain has no compute pallet');
    this.genesis = api.genesisHash.toHex();
    const [chainType, name] = await Promise.all([api.rpc.system.chainType(), api.rpc.system.chain()]);
    this.isDev = chainType.isDevelopment || chainType.isLocal;
    this.chainName = name.toString();
    provider.on('disconnected', () => this.emit('connection', 'disconnected'));
    provider.on('connected', () => this.emit('connection', 'connected'));
    await this.loadServices();
    await this.subscribe();
    this.loadHistory().catch((e) => console.warn('history', e));
    return this;
  }

  async subscribe() {
    const api = this.api;
    this.unsubs.push(await api.rpc.chain.subscribeNewHeads((h) => {
      this.best = h.number.toNumber();
      this.emit('head');
      this.blockEvents(h.hash, this.best, true).catch((e) => console.warn('events', e));
    }));
    this.unsubs.push(await api.rpc.chain.subscribeFinalizedHeads((h) => {
      this.finalized = h.number.toNumber();
      this.emit('head');
    }));
    // The validator set: the session's validators where the runtime has a session pallet, else
    // the block authors (Aura) of a dev chain.
    const setValidators = (list) => {
      this.validators = list.map((v) => v.toString());
      this.emit('head');
    };
    if (api.query.session?.validators) {
      this.unsubs.push(await api.query.session.validators(setValidators));
    } else if (api.query.aura?.authorities) {
      this.unsubs.push(await api.query.aura.authorities((keys) =>
        setValidators(keys.map((k) => api.createType('AccountId', k.toU8a()).toString()))));
    }
  }

  /** Every registered service, from storage. */
  async loadServices() {
    const entries = await this.api.query.compute.services.entries();
    const next = new Map();
    for (const [key, value] of entries) {
      const s = value.isSome ? value.unwrap() : value;
      if (value.isNone) continue;
      const [provider, id] = key.args;
      const svc = {
        provider: provider.toString(),
        serviceId: id.toNumber(),
        kind: s.kind.type.toLowerCase(),
        model: text(s.model),
        modelHash: s.modelHash.toHex(),
        url: text(s.url),
        inputPrice: s.inputPrice.toBigInt(),
        outputPrice: s.outputPrice.toBigInt(),
        verifiability: text(s.verifiability),
        priceVersion: s.priceVersion.toNumber(),
      };
      next.set(`${svc.provider}/${svc.serviceId}`, svc);
    }
    this.services = next;
    this.emit('services');
    await this.subscribeProviders();
  }

  /** Subscribe to the provider records of every provider with a service (re-done when the
   * set of providers changes). A storage notification carries only the keys that changed;
   * polkadot.js batches subscriptions made together into one and fills the unchanged keys from
   * a cache whose entries expire, so an unchanged record can come back as "none". Provider
   * records are never removed (docs/protocol.md §3), so a "none" after a value is that artefact
   * and the last value stands. */
  async subscribeProviders() {
    const list = [...new Set([...this.services.values()].map((s) => s.provider))].sort();
    if (this.providerList && list.join() === this.providerList.join()) return;
    this.providerList = list;
    const old = this.providerUnsubs ?? [];
    old.forEach((u) => u());
    const next = new Map();
    this.providers = next;
    this.providerUnsubs = await Promise.all(list.map((provider) =>
      this.api.query.compute.providers(provider, (rec) => {
        if (this.providers !== next) return; // a newer set of subscriptions took over
        if (rec.isNone) {
          if (next.has(provider)) return; // never removed on chain: a stale cache fill
        } else {
          const p = rec.unwrap();
          next.set(provider, {
            provider,
            bond: p.bond.toBigInt(),
            services: p.services.toNumber(),
            unbonding: p.unbonding.isTrue,
            claimsSettled: p.claimsSettled.toBigInt(),
            requestsSettled: p.requestsSettled.toBigInt(),
            earned: p.earned.toBigInt(),
            disputesLost: p.disputesLost.toBigInt(),
            lastSettledAt: p.lastSettledAt.toNumber(),
          });
        }
        this.emit('providers');
      })));
  }

  /** Sort a block's compute events into settlements and disputes; re-read services when one
   * changed. `live` events go to the front, history is appended behind. */
  async blockEvents(hash, number, live) {
    const events = await this.api.query.system.events.at(hash);
    let servicesChanged = false;
    const found = { settlements: [], disputes: [] };
    for (const { event } of events) {
      if (event.section !== 'compute') continue;
      const row = { block: number, name: event.method, ...fields(event) };
      if (SETTLEMENT_EVENTS.has(event.method)) found.settlements.push(row);
      else if (DISPUTE_EVENTS.has(event.method)) found.disputes.push(row);
      else if (SERVICE_EVENTS.has(event.method)) servicesChanged = true;
    }
    for (const k of ['settlements', 'disputes']) {
      if (!found[k].length) continue;
      // A block seen again (a re-org, or history overlapping live) replaces its rows.
      const rest = this[k].filter((r) => r.block !== number);
      this[k] = (live ? [...found[k], ...rest] : [...rest, ...found[k]])
        .sort((a, b) => b.block - a.block).slice(0, MAX_EVENTS);
      this.emit(k);
    }
    if (servicesChanged && live) await this.loadServices();
  }

  /** The settlements and disputes of the last HISTORY_BLOCKS blocks, eight reads at a time. */
  async loadHistory() {
    const head = await this.api.rpc.chain.getHeader();
    const top = head.number.toNumber();
    const numbers = [];
    for (let n = top; n > Math.max(0, top - HISTORY_BLOCKS); n--) numbers.push(n);
    while (numbers.length) {
      await Promise.all(numbers.splice(0, 8).map(async (n) => {
        const hash = await this.api.rpc.chain.getBlockHash(n);
        await this.blockEvents(hash, n, false);
      }));
    }
  }

  /** A service by provider and id. */
  service(provider, id) {
    return this.services.get(`${provider}/${id}`);
  }

  /** The escrow record of (user, provider) as plain values, or null. */
  static plainEscrow(e) {
    return {
      balance: e.balance.toBigInt(),
      pendingRefund: e.pendingRefund.toBigInt(),
      unlockAt: e.unlockAt.toNumber(),
      settledNonce: e.settledNonce.toBigInt(),
      settledTotal: e.settledTotal.toBigInt(),
      held: e.held.toBigInt() + e.heldNext.toBigInt(),
    };
  }

  async escrow(user, provider) {
    const e = await this.api.query.compute.escrows(user, provider);
    return e.isSome ? Chain.plainEscrow(e.unwrap()) : null;
  }

  /** `module.Error: docs` of a failed dispatch, from the metadata. */
  explain(dispatchError) {
    if (dispatchError.isModule) {
      const { section, name, docs } = this.api.registry.findMetaError(dispatchError.asModule);
      return `${section}.${name}: ${docs.join(' ').trim()}`;
    }
    return dispatchError.toString();
  }
}

export { u8aToHex };
