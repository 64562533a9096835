//! Brings the code under test into this crate without its heavy dependencies:
//!
//! - `MAX_BATCH`, the runtime's `MaxBatch` (bound of `settle`'s claims), read from
//!   `runtime/src/configs.rs` so the bound fuzzed is always the one the runtime uses;
//! - the provider worker's voucher admission (`provider-worker/src/billing/admission.rs`, whole)
//!   and its request parsing (`parse_chat`, `parse_embedding`, their request types and limits
//!   from `provider-worker/src/api/openai.rs`), with the plain data types they use (`EscrowState` and
//!   `ServiceInfo` from `client/src/chain.rs`, `Sequence` and `UserView` from the worker's
//!   store, `ChatMessage` and `GenParams` from `inference/src/`). Items are copied at build time, verbatim but for their
//!   visibility (made `pub`) and `compute_client::` imports (pointed at this crate's copy), so
//!   the targets always fuzz the worker's current code; the worker itself pulls candle, axum,
//!   subxt and SQLite, far too slow to build instrumented.
//!
//! A renamed or moved item fails this script with a message naming it.

use std::{fs, path::Path};
use syn::{parse_quote, Fields, Item, UseTree};

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    let out = Path::new(&out);

    let configs = source("../runtime/src/configs.rs");
    let max_batch = configs
        .items
        .iter()
        .find_map(|item| match item {
            Item::Const(c) if c.ident == "MAX_BATCH" => match &*c.expr {
                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(n), .. }) => {
                    Some(n.base10_parse::<u32>().expect("MAX_BATCH is a u32 literal"))
                }
                _ => None,
            },
            _ => None,
        })
        .expect("runtime/src/configs.rs: `pub const MAX_BATCH: u32 = <literal>;` not found");
    fs::write(out.join("max_batch.rs"), format!("{max_batch}")).expect("write max_batch.rs");

    write(
        out,
        "client.rs",
        pick("../client/src/chain.rs", &["BlockNumber", "EscrowState", "ServiceInfo", "ServiceTerms"]),
    );
    write(out, "store.rs", pick("../provider-worker/src/store/mod.rs", &["Sequence", "UserView"]));
    let mut model = pick("../inference/src/template.rs", &["ChatMessage", "MessageError"]);
    model.extend(pick("../inference/src/engine.rs", &["GenParams"]));
    write(out, "model.rs", model);
    write(out, "admission.rs", whole("../provider-worker/src/billing/admission.rs"));
    write(
        out,
        "request.rs",
        pick(
            "../provider-worker/src/api/openai.rs",
            &[
                "MIN_TEMPERATURE",
                "MAX_STOP_BYTES",
                "Stop",
                "RawMessage",
                "ChatRequest",
                "Parsed",
                "parse_chat",
                "EmbeddingRequest",
                "Encoding",
                "ParsedEmbedding",
                "parse_embedding",
            ],
        ),
    );
}

fn source(path: &str) -> syn::File {
    println!("cargo:rerun-if-changed={path}");
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

fn write(out: &Path, name: &str, items: Vec<Item>) {
    let file = syn::File { shebang: None, attrs: Vec::new(), items };
    fs::write(out.join(name), prettyplease::unparse(&file)).expect("write generated source");
}

/// The named items of `path` (structs, enums, functions, type aliases, constants) and the impl
/// blocks of the named types, all made `pub`.
fn pick(path: &str, names: &[&str]) -> Vec<Item> {
    let file = source(path);
    let mut found = vec![false; names.len()];
    let mut items = Vec::new();
    for item in file.items {
        let ident = match &item {
            Item::Struct(s) => Some(&s.ident),
            Item::Enum(e) => Some(&e.ident),
            Item::Fn(f) => Some(&f.sig.ident),
            Item::Type(t) => Some(&t.ident),
            Item::Const(c) => Some(&c.ident),
            Item::Impl(i) => match &*i.self_ty {
                syn::Type::Path(p) => p.path.segments.last().map(|s| &s.ident),
                _ => None,
            },
            _ => None,
        };
        let Some(index) = ident.and_then(|id| names.iter().position(|n| id == n)) else {
            continue;
        };
        if !matches!(item, Item::Impl(_)) {
            found[index] = true;
        }
        items.push(publish(item));
    }
    for (name, found) in names.iter().zip(found) {
        assert!(found, "{path}: item `{name}` not found; update fuzz/build.rs");
    }
    items
}

/// Every item of `path` but its `#[cfg(test)]` modules, with `compute_client::` imports pointed at
/// `crate::client`.
fn whole(path: &str) -> Vec<Item> {
    source(path)
        .items
        .into_iter()
        .filter(|item| !matches!(item, Item::Mod(m) if m.attrs.iter().any(is_cfg_test)))
        .map(|item| match item {
            Item::Use(mut u) => {
                if let UseTree::Path(p) = &u.tree {
                    if p.ident == "compute_client" {
                        let rest = &p.tree;
                        u.tree = parse_quote!(crate::client::#rest);
                    }
                }
                Item::Use(u)
            }
            other => other,
        })
        .collect()
}

fn is_cfg_test(attr: &syn::Attribute) -> bool {
    attr.path().is_ident("cfg")
        && attr.parse_args::<syn::Ident>().map(|i| i == "test").unwrap_or(false)
}

fn publish(item: Item) -> Item {
    let public: syn::Visibility = parse_quote!(pub);
    let fields = |fields: &mut Fields| {
        for f in fields.iter_mut() {
            f.vis = public.clone();
        }
    };
    match item {
        Item::Struct(mut s) => {
            s.vis = public.clone();
            fields(&mut s.fields);
            Item::Struct(s)
        }
        Item::Enum(mut e) => {
            e.vis = public;
            Item::Enum(e)
        }
        Item::Fn(mut f) => {
            f.vis = public;
            Item::Fn(f)
        }
        Item::Type(mut t) => {
            t.vis = public;
            Item::Type(t)
        }
        Item::Const(mut c) => {
            c.vis = public;
            Item::Const(c)
        }
        other => other,
    }
}
