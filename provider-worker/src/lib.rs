//! The provider worker: serve a model, charge exactly what users signed for, settle on chain.
pub mod admission;
pub mod config;
pub mod http;
pub mod metrics;
pub mod model;
pub mod settlement;
pub mod store;
pub mod worker;
