//! The parts of `dap-bench` that are worth unit tests: the data generator, the result
//! comparison, the child-process stack, the operation benchmarks and the connection-scale benchmarks. The push-loop benchmarks
//! live in the binary (`src/noop.rs`). Nothing here runs under `cargo test` except the tests.

pub mod compare;
pub mod datagen;
pub mod ops;
pub mod scale;
pub mod stack;
