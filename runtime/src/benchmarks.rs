//! The pallets whose benchmarks `compute-node benchmark pallet` can run (feature
//! `runtime-benchmarks`). Weights of the other pallets come from polkadot-sdk's own files.

polkadot_sdk::frame_benchmarking::define_benchmarks!([pallet_compute, Compute]);
