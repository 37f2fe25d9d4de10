//! What is generated from the tool's clap definition: shell completions
//! (`zos completions SHELL`) and the man pages (`zos man DIR`, run by `cargo xtask man`).

use std::path::Path;
use std::process::Command;

fn zos(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = zos(args);
    assert!(out.status.success(), "zos {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every top-level command a person types.
const COMMANDS: [&str; 8] = [
    "key",
    "blueprint",
    "contract",
    "flist",
    "farm",
    "node",
    "status",
    "completions",
];

#[test]
fn bash_completion_names_every_command_and_is_valid_bash() {
    let script = ok(&["completions", "bash"]);
    for name in COMMANDS {
        assert!(script.contains(name), "no {name} in:\n{script}");
    }
    // Subcommands of subcommands and their options too.
    for word in ["verify", "publish", "unpack", "--notary", "--json"] {
        assert!(script.contains(word), "no {word} in the bash completion");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zos.bash");
    std::fs::write(&file, &script).unwrap();
    // bash itself sources it and completes as a person would see.
    let complete = |line: &str| -> Vec<String> {
        let words: Vec<&str> = line.split(' ').collect();
        let check = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {} && COMP_WORDS=({}) && COMP_CWORD={} && COMP_LINE='{line}' && \
                 COMP_POINT={} && _zos zos '{}' '{}' && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                file.display(),
                words
                    .iter()
                    .map(|w| format!("'{w}'"))
                    .collect::<Vec<_>>()
                    .join(" "),
                words.len() - 1,
                line.len(),
                words[words.len() - 1],
                words[words.len() - 2],
            ))
            .output()
            .unwrap();
        assert!(check.status.success(), "bash: {check:?}");
        String::from_utf8_lossy(&check.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(complete("zos con"), ["contract"]);
    let top = complete("zos ");
    for name in COMMANDS {
        assert!(
            top.iter().any(|w| w == name),
            "`zos ` offers no {name}: {top:?}"
        );
    }
    // The hidden man page writer is not offered.
    assert!(
        !top.iter().any(|w| w == "man"),
        "`zos ` offers man: {top:?}"
    );
    let status = complete("zos contract status --");
    assert!(status.iter().any(|w| w == "--json"), "{status:?}");
    assert!(status.iter().any(|w| w == "--notary"), "{status:?}");
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    for shell in ["zsh", "fish"] {
        let script = ok(&["completions", shell]);
        for name in COMMANDS {
            assert!(script.contains(name), "{shell}: no {name} in:\n{script}");
        }
    }
    let out = zos(&["completions", "tcsh"]);
    assert!(!out.status.success(), "an unknown shell is refused");
}

/// Renders a man page as `man -l` would; the text, or None when no renderer is here.
fn render(page: &Path) -> Option<String> {
    for (program, args) in [
        ("man", vec!["-l", "-P", "cat"]),
        ("groff", vec!["-man", "-Tutf8"]),
    ] {
        let Ok(out) = Command::new(program)
            .args(&args)
            .arg(page)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
        else {
            continue;
        };
        assert!(out.status.success(), "{program} {page:?}: {out:?}");
        return Some(plain(&String::from_utf8_lossy(&out.stdout)));
    }
    None
}

/// The text without a terminal's overstrike (bold `X\x08X`, underline `_\x08X`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\x08' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn man_pages_are_written_one_per_command_and_render() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man");
    let out = zos(&["man", pages.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for name in [
        "zos.1",
        "zos-contract.1",
        "zos-contract-status.1",
        "zos-contract-verify.1",
        "zos-flist-unpack.1",
        "zos-farm-show.1",
        "zos-node-list.1",
        "zos-status.1",
        "zos-completions.1",
    ] {
        let page = pages.join(name);
        let text =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(
            text.starts_with(".ie") || text.contains("\n.TH "),
            "{name}: {text}"
        );
        assert!(text.contains(".TH "), "{name} has no .TH header");
    }
    // Not a page for the hidden writer itself.
    assert!(!pages.join("zos-man.1").exists());

    let status = pages.join("zos-contract-status.1");
    match render(&status) {
        Some(text) => {
            let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(flat.contains("NAME"), "{text}");
            assert!(flat.contains("zos-contract-status"), "{text}");
            assert!(flat.contains("--json"), "{text}");
            assert!(flat.contains("signed status record"), "{text}");
        }
        None => eprintln!(
            "SKIP: man_pages_are_written_one_per_command_and_render: rendering: neither man \
             nor groff is installed (the .TH headers were checked)"
        ),
    }
}
