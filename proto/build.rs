//! Compiles ttg/v1/*.proto with a vendored protoc, so a fresh machine needs no system protoc.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // SAFETY of intent: build scripts are single-threaded; set before any thread reads it.
        unsafe_set_protoc(protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "ttg/v1/records.proto",
        "ttg/v1/control.proto",
        "ttg/v1/agent.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("ttg_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_set_protoc(path: PathBuf) {
    // set_var is unsafe in edition 2024 only because other threads may read the
    // environment; a build script has no other threads.
    #[allow(unused_unsafe)]
    unsafe {
        env::set_var("PROTOC", path)
    };
}
