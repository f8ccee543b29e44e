//! With the `torch` feature: bakes the libtorch directory into every
//! artifact's rpath, so that tests, examples and binaries run without
//! LD_LIBRARY_PATH (torch-sys exports the directory only to crates that
//! depend on it directly: links = "tch"), and compiles the C++ shims (the
//! optimizers' ATen kernels, src/optim/kernels.cpp, tensors over borrowed
//! memory, src/borrowed_memory.cpp, and the default generators' state,
//! src/rng.cpp) against the same libtorch.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    torch_kernels(std::path::Path::new(&lib));
}

#[cfg(feature = "torch")]
fn torch_kernels(lib: &std::path::Path) {
    let include = lib.parent().expect("libtorch lib dir has a parent").join("include");
    println!("cargo:rerun-if-changed=src/optim/kernels.cpp");
    println!("cargo:rerun-if-changed=src/borrowed_memory.cpp");
    println!("cargo:rerun-if-changed=src/rng.cpp");
    println!("cargo:rerun-if-changed=src/shim_guard.h");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++20") // the 2.13 headers use C++20 bit-field initializers
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        .flag_if_supported("-Wno-unused-parameter")
        .file("src/optim/kernels.cpp")
        .file("src/borrowed_memory.cpp")
        .file("src/rng.cpp")
        .compile("pytorch_saver_kernels");
}

#[cfg(not(feature = "torch"))]
fn torch_kernels(_: &std::path::Path) {}
