//! The worker's embeddings request parsing (`parse_embedding` from
//! `provider-worker/src/http.rs`, compiled here from that file by `build.rs`) on
//! attacker-controlled bodies: any client can POST any bytes to `/v1/embeddings` with a valid
//! voucher. Checks that parsing never panics, that a body that is not JSON is refused as
//! `invalid_json`, that every refusal is a 400 that uses the nonce, and that what is accepted
//! holds 1 to `max_inputs` strings (the batcher's bound), in the order the body gives them.
#![no_main]

use compute_fuzz::request::parse_embedding;
use libfuzzer_sys::fuzz_target;

/// all-MiniLM-L6-v2's dimension and a small input limit (so the limit is reached).
const DIM: usize = 384;
const MAX_INPUTS: usize = 4;

fuzz_target!(|data: &[u8]| {
    match parse_embedding(data, DIM, MAX_INPUTS) {
        Err(r) => {
            assert_eq!(r.status, 400, "{r:?}");
            assert!(r.uses_nonce, "{r:?}");
            // Not JSON at all (syntax checked without building values) must read as such.
            if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
                assert_eq!(r.code, "invalid_json", "{r:?}");
            }
        }
        Ok(p) => {
            assert!(!p.inputs.is_empty() && p.inputs.len() <= MAX_INPUTS, "{}", p.inputs.len());
            // The inputs are the body's `input`: one string, or the array's strings in order.
            // (A body can be accepted that `Value` refuses, e.g. an ignored field holding 1e400.)
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else { return };
            let input = &json["input"];
            let expected: Vec<&str> = match input {
                serde_json::Value::String(s) => vec![s.as_str()],
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
                other => panic!("accepted input {other}"),
            };
            assert_eq!(p.inputs, expected);
        }
    }
});
