//! End-to-end tests live in `tests/`; they drive `cargo xtask` and the built image the
//! way a farmer or CI would. This library is empty.
