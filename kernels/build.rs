include!("build_support.rs");

fn main() {
    compile_kernels("cuda");
}
