//! `zos`: the command-line tool for IT experts, consumers, stakeholders and farmers
//! (the commands live in the zos_cli library, src/lib.rs).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    zos_cli::main()
}
