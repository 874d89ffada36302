//! Mistakes the compiler catches, each with a message that says what to do: a task argument
//! that borrows, a plain function passed to `run`, a task asking for what cannot be. Each program in `tests/ui/` must fail to
//! compile with exactly the diagnostics in the `.stderr` file beside it.
//!
//! The programs are compiled by `rustc` against the `blitzen` library of the test build itself
//! (cargo names it: `cargo test --no-run --message-format=json`, which finds everything up to
//! date when run from the suite), so no second copy of the dependency tree is built for them.
//! Paths are shown relative to the workspace, and line numbers outside the program are left out,
//! so that an edit elsewhere does not change the expected text (see [`normalize`]). `BLITZEN_BLESS=1` writes what the
//! compiler said into the `.stderr` files instead of comparing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("driver/ is in the workspace").into()
}

/// The `blitzen` rlib of the test build and the folder of its dependencies.
fn blitzen_library() -> (PathBuf, PathBuf) {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // What cargo set for this test process would change the build scripts' inputs.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours =
            name.starts_with("CARGO_") && !matches!(&*name, "CARGO_HOME" | "CARGO_TARGET_DIR");
        if ours || name == "OUT_DIR" {
            cargo.env_remove(&*name);
        }
    }
    let out = cargo
        .current_dir(workspace())
        .args(["test", "--workspace", "--no-run", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo test --workspace --no-run failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rlib = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == "blitzen"
                && m["target"]["kind"] == serde_json::json!(["lib"])
                && m["profile"]["test"] == false
        })
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().filter(|f| f.ends_with(".rlib")).map(PathBuf::from))
        .next()
        .expect("cargo names the blitzen library it built");
    let deps = rlib.parent().expect("target/<profile>/deps").to_path_buf();
    (rlib, deps)
}

/// What rustc says about one program, in the form the `.stderr` files keep.
fn diagnostics(program: &Path, rlib: &Path, deps: &Path) -> String {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-fail");
    std::fs::create_dir_all(&scratch).expect("scratch folder");
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        // Where cargo compiled the libraries from: their snippets are read from the paths they
        // were compiled with, relative to the workspace.
        .current_dir(workspace())
        .arg(program)
        .args(["--edition", "2024", "--crate-type", "bin", "--emit", "metadata"])
        .args(["--color", "never", "--diagnostic-width", "140", "-A", "warnings"])
        .arg("--extern")
        .arg(format!("blitzen={}", rlib.display()))
        .arg("-L")
        .arg(format!("dependency={}", deps.display()))
        .arg("--out-dir")
        .arg(&scratch)
        .output()
        .expect("rustc runs");
    assert!(!out.status.success(), "{} compiled, but must not", program.display());
    normalize(&String::from_utf8_lossy(&out.stderr), program)
}

/// The diagnostics in a form that only the program and the messages change: paths relative to
/// the workspace, the gutter at one width, line numbers only inside the program itself (the
/// snippets of other files keep their text), and no closing "aborting due to" lines.
fn normalize(stderr: &str, program: &Path) -> String {
    let root = format!("{}/", workspace().display());
    let own = program.to_string_lossy().into_owned();
    let mut lines = Vec::new();
    let mut in_other_file = false;
    for line in stderr.replace(&root, "").lines() {
        let trimmed = line.trim_start();
        if line.starts_with("error: aborting due to") || line.starts_with("For more information") {
            continue;
        }
        if let Some(path) = trimmed.strip_prefix("--> ").or_else(|| trimmed.strip_prefix("::: ")) {
            // `  --> common/src/builtin.rs:12:1` → ` --> common/src/builtin.rs`
            in_other_file = !path.starts_with(&own);
            let shown = if in_other_file { path.split(':').next().unwrap_or(path) } else { path };
            lines.push(format!(" {} {shown}", &trimmed[..3]));
        } else if let Some(note) = trimmed.strip_prefix("= ") {
            lines.push(format!("    = {note}"));
        } else if let Some((gutter, rest)) =
            line.split_once('|').filter(|(g, _)| g.trim().chars().all(|c| c.is_ascii_digit()))
        {
            // `12 |     code` → `   |     code` in another file, ` 12 |     code` in the program.
            let number = if in_other_file { "" } else { gutter.trim() };
            lines.push(format!("{number:>3} |{rest}"));
        } else {
            // `error…`, `note: …`, `help: …` start at the margin, and a location follows them;
            // `...` only leaves lines of the same file out.
            if !line.starts_with(' ') && !line.is_empty() && line != "..." {
                in_other_file = false;
            }
            lines.push(line.to_string());
        }
    }
    let mut text = lines.join("\n").trim_end().to_string();
    text.push('\n');
    text
}

#[test]
fn mistakes_fail_to_compile_with_a_message_that_says_what_to_do() {
    let (rlib, deps) = blitzen_library();
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let mut programs: Vec<PathBuf> = std::fs::read_dir(&ui)
        .expect("tests/ui")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    programs.sort();
    assert!(!programs.is_empty(), "no programs in {}", ui.display());
    let bless = std::env::var_os("BLITZEN_BLESS").is_some();
    let mut wrong = Vec::new();
    for program in &programs {
        let relative = program.strip_prefix(workspace()).expect("in the workspace");
        let said = diagnostics(relative, &rlib, &deps);
        let expected_file = program.with_extension("stderr");
        if bless {
            std::fs::write(&expected_file, &said).expect("write the .stderr file");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if said != expected {
            wrong.push(format!(
                "{}: the compiler said\n{said}\n… where {} expects\n{expected}",
                relative.display(),
                expected_file.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
