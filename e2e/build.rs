//! Compiles mesh-echo's gRPC services (its own, and the conformance suite's echo) with protox (pure Rust, no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "mesh/echo/v1/echo.proto",
        "gateway_api_conformance/echo_basic/grpcecho/grpcecho.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
