//! Compiles `proto/synapse.proto` with protox (no `protoc` needed) into tonic code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/synapse.proto");
    let fds = protox::compile(["proto/synapse.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
