//! Compiles `machines/order.yml` with `flatmachine_build::Builder` into `OUT_DIR`, so the tests
//! can check that the build.rs route and the `flatmachine!` macro give the same machine.

fn main() {
    if let Err(e) = flatmachine_build::Builder::new()
        .machine("machines/order.yml")
        .compile()
    {
        panic!("{e}");
    }
}
