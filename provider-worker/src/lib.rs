//! The provider worker: serve a model, charge exactly what users signed for, settle on chain.
//!
//! - [`api`]: the OpenAI-compatible HTTP API and the server;
//! - [`billing`]: voucher admission, per-user budgets, and the paid-request job that always
//!   ends in a sealed receipt;
//! - [`store`]: the durable trace store (SQLite or PostgreSQL);
//! - [`settlement`]: claims on chain, and releasing held payments;
//! - [`model`]: the inference engine, the `compute-inference` crate (GGUF llama, BERT
//!   embeddings);
//! - [`finetune`]: fine-tuning jobs: datasets, the job driver, training;
//! - [`worker`]: the shared state and start-up.
pub mod api;
pub mod billing;
pub mod config;
pub mod finetune;
pub mod metrics;
pub use compute_inference as model;
pub mod settlement;
pub mod store;
pub mod worker;
