//! Compiles `proto/pinstream/v1/ingest.proto` (the gRPC gateway's service) without `protoc`:
//! protox parses it in Rust, tonic-prost-build writes the messages, the server and the
//! client into `OUT_DIR`, and the encoded descriptor set is written beside them for the
//! reflection service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/pinstream/v1/ingest.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("pinstream_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".pinstream.v1.Event.payload")
        .compile_fds(fds)?;
    Ok(())
}
