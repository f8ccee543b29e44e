//! Bakes the libtorch directory into every artifact's rpath, so that tests,
//! examples and binaries run without LD_LIBRARY_PATH. torch-sys exports the
//! directory only to crates that depend on it directly (links = "tch").
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
