//! `compute-node`: the node of the compute marketplace appchain.

mod chain_spec;
mod cli;
mod command;
mod compute_rpc;
mod rpc;
mod sealing;
mod service;

fn main() {
    if let Err(e) = command::run() {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}
