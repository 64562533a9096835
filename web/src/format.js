// Amounts: u128 smallest units as BigInt, 12 decimals to the unit (runtime UNIT = 10^12).

export const DECIMALS = 12;
export const UNIT = 10n ** 12n;

/** 1500000000000n -> "1.5" (trailing zeros dropped). */
export function formatUnits(v) {
  const x = BigInt(v);
  const neg = x < 0n;
  const a = neg ? -x : x;
  const frac = (a % UNIT).toString().padStart(DECIMALS, '0').replace(/0+$/, '');
  return `${neg ? '-' : ''}${a / UNIT}${frac ? `.${frac}` : ''}`;
}

/** "0.5" -> 500000000000n; refuses anything but a plain decimal with at most 12 decimals. */
export function parseUnits(s) {
  const t = String(s).trim();
  const m = /^(\d*)(?:\.(\d{0,12}))?$/.exec(t);
  if (!t || !m || (m[1] === '' && (m[2] ?? '') === '')) throw new Error(`"${s}" is not an amount in units`);
  return BigInt(m[1] || '0') * UNIT + BigInt((m[2] ?? '').padEnd(DECIMALS, '0') || '0');
}

/** Price per token (smallest units) as units per million tokens. */
export const perMillion = (price) => formatUnits(BigInt(price) * 1_000_000n);

/** Short form of an address or hash for tables (the full value is in the title). */
export const short = (s) => (s && s.length > 14 ? `${s.slice(0, 6)}…${s.slice(-6)}` : s ?? '');
