//! The pallets whose benchmarks `compute-node benchmark pallet` can run (feature
//! `runtime-benchmarks`): ours, and polkadot-sdk's baseline (hashing, storage, sr25519
//! verification), measured on the same machine so the pallet's figures can be compared.
//! The macros it defines expand in `apis.rs`, so the paths here are absolute.

impl polkadot_sdk::frame_benchmarking::baseline::Config for crate::Runtime {}

polkadot_sdk::frame_benchmarking::define_benchmarks!(
    [frame_benchmarking, polkadot_sdk::frame_benchmarking::baseline::Pallet::<crate::Runtime>]
    [pallet_compute, crate::Compute]
);
