//! Keeps the protoc-bin-vendored crate in the build: its protoc, run through scripts/protoc
//! (see .cargo/config.toml), compiles etcd-client's .proto files, so that building needs no
//! system package.

fn main() {
    // Fails the build with a clear message on a platform the crate has no protoc for.
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo::warning=no vendored protoc for this platform ({e}); set PROTOC");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
