//! Prints the worked example of docs/contract-format.md: every intermediate value,
//! from fixed seeds. `tests/spec_example.rs` checks the document against this.

use zos_contract::spec_example::Example;

fn main() {
    let ex = Example::build();
    for (name, value) in ex.blocks() {
        println!("```text {name}\n{value}\n```\n");
    }
}
