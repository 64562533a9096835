fn main() {
    #[cfg(feature = "std")]
    {
        substrate_wasm_builder::WasmBuilder::build_using_defaults();
        // The same runtime one `spec_version` ahead, for the network test that upgrades a
        // running chain with `sudo.set_code` (zombienet/validators.zndsl). Only the runtime
        // crate itself is compiled again: its dependencies' features are the same.
        substrate_wasm_builder::WasmBuilder::init_with_defaults()
            .enable_feature("upgrade-test")
            .set_file_name("upgrade_test_wasm.rs")
            .build();
    }
}
