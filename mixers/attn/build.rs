include!("../../kernels/build_support.rs");

fn main() {
    compile_kernels_fatbin("cuda");
}
