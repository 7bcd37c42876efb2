//! Compiles `synapse.v1` with the vendored protoc, so no system protoc is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("synapse_descriptor.bin"))
        .compile_protos(&["proto/synapse/v1/synapse.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/synapse/v1/synapse.proto");
    Ok(())
}
