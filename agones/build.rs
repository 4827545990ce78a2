//! Compiles the Agones SDK protobufs with the vendored `protoc` (and its
//! well-known types), so no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut prost = prost_build::Config::new();
    prost.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=proto/sdk.proto");
    println!("cargo:rerun-if-changed=proto/beta.proto");
    let include = protoc_bin_vendored::include_path()?;
    let include = include
        .to_str()
        .ok_or("protoc's include path is not UTF-8")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            prost,
            &["proto/sdk.proto", "proto/beta.proto"],
            &["proto", include],
        )?;
    Ok(())
}
