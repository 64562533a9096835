//! The worker's chat request parsing (`parse_chat` from `provider-worker/src/api/openai.rs`, compiled
//! here from that file by `build.rs`) on attacker-controlled bodies: any client can POST any
//! bytes to `/v1/chat/completions` with a valid voucher. Checks that parsing never panics, that a
//! body that is not JSON is refused as `invalid_json`, that every refusal is a 400 that uses the
//! nonce (the worker signs a fee-0 receipt for it), and that what is accepted is within the
//! limits generation relies on: at least one message, known roles only (`developer` becomes
//! `system`), temperature in 0..=2, top_p in (0, 1], 1 <= max_tokens <= the configured limit, at
//! most 4 non-empty stop strings, and the same body parses to the same request again.
#![no_main]

use compute_fuzz::request::parse_chat;
use libfuzzer_sys::fuzz_target;

/// The worker's default `max_tokens` limit order of magnitude; any positive value works.
const LIMIT: u64 = 512;

fuzz_target!(|data: &[u8]| {
    match parse_chat(data, LIMIT) {
        Err(r) => {
            assert_eq!(r.status, 400, "{r:?}");
            assert!(r.uses_nonce, "{r:?}");
            // Not JSON at all (syntax checked without building values) must read as such.
            if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
                assert_eq!(r.code, "invalid_json", "{r:?}");
            }
        }
        Ok(p) => {
            assert!(!p.messages.is_empty());
            for m in &p.messages {
                assert!(matches!(m.role.as_str(), "system" | "user" | "assistant"), "{}", m.role);
            }
            let g = &p.params;
            assert!((0.0..=2.0).contains(&g.temperature), "temperature {}", g.temperature);
            assert!(g.top_p > 0.0 && g.top_p <= 1.0, "top_p {}", g.top_p);
            assert!(
                g.max_tokens >= 1 && g.max_tokens as u64 <= LIMIT,
                "max_tokens {}",
                g.max_tokens
            );
            assert!(g.stop.len() <= 4 && g.stop.iter().all(|s| !s.is_empty()));
            assert!(g.stop.iter().all(|s| s.len() <= compute_fuzz::request::MAX_STOP_BYTES));
            assert!(
                g.temperature == 0.0 || g.temperature >= compute_fuzz::request::MIN_TEMPERATURE,
                "a temperature that overflows sampling: {}",
                g.temperature
            );
            let again = parse_chat(data, LIMIT).expect("parses again");
            assert_eq!(again.model, p.model);
            assert_eq!(again.messages, p.messages);
            assert_eq!(again.stream, p.stream);
            assert_eq!((again.params.max_tokens, &again.params.stop), (g.max_tokens, &g.stop));
        }
    }
});
