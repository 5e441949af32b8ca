//! Records the target triple for `jetkvm_exporter_build_info`.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=JETKVM_METRICS_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
