//! `compute-node`: the node of the compute marketplace appchain.

// `sc_service::Error` and `sc_cli::Error` are polkadot-sdk's; their size is not ours to change.
#![allow(clippy::result_large_err)]

mod chain_spec;
mod cli;
mod command;
mod rpc;
mod sealing;
mod service;

fn main() {
    if let Err(e) = command::run() {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}
