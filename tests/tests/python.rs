//! The Python package's pytest suite (`python/tests`), on a real CPython, as part of
//! `cargo test --workspace`.
//!
//! The test builds the extension module (`cargo build -p blitzen-python`), lays the package out
//! in a folder of its own (`blitzen/*.py` and `blitzen/_native.abi3.so`), and runs pytest in a
//! virtual environment under the target directory that has pytest, cloudpickle and numpy
//! (installed from PyPI the first time). `BLITZEN_PYTHON` names the interpreter (default
//! `python3`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

/// Builds the extension module; returns the path of the shared library.
fn build_extension() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // What cargo sets for this test process would change the build scripts' inputs and
    // rebuild their crates, here and again in the next `cargo test`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours =
            name.starts_with("CARGO_") && !matches!(&*name, "CARGO_HOME" | "CARGO_TARGET_DIR");
        if ours || name == "LD_LIBRARY_PATH" || name == "OUT_DIR" {
            build.env_remove(&*name);
        }
    }
    let out = build
        .current_dir(workspace())
        .args(["build", "-p", "blitzen-python", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo build -p blitzen-python failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| {
            m["filenames"].as_array().cloned().unwrap_or_default().into_iter().filter_map(|f| {
                f.as_str().filter(|f| f.ends_with("lib_native.so")).map(PathBuf::from)
            })
        })
        .last()
        .expect("cargo reports the extension module it built")
}

/// The package as Python imports it: the sources and the built module, side by side.
fn stage(library: &Path, into: &Path) -> PathBuf {
    let package = into.join("blitzen");
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(&package).expect("staging folder");
    let sources = workspace().join("python/blitzen");
    for entry in std::fs::read_dir(&sources).expect("python/blitzen") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&path, package.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    std::fs::copy(library, package.join("_native.abi3.so")).expect("copy the module");
    into.to_path_buf()
}

/// A virtual environment with what the suite imports.
fn venv(at: &Path) -> PathBuf {
    let python = at.join("bin/python");
    if !python.exists() {
        let system = std::env::var("BLITZEN_PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(system).arg("-m").arg("venv").arg(at), "python3 -m venv");
    }
    let ready = Command::new(&python)
        .args(["-c", "import pytest, cloudpickle, numpy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        run(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "pytest",
                "cloudpickle",
                "numpy",
            ]),
            "pip install pytest cloudpickle numpy",
        );
    }
    python
}

#[test]
fn the_python_package_passes_its_pytest_suite() {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let library = build_extension();
    let site = stage(&library, &scratch.join("python-package"));
    let python = venv(&scratch.join("python-venv"));
    let tests = workspace().join("python/tests");
    let out = Command::new(&python)
        .current_dir(&tests)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "."])
        .env("PYTHONPATH", &site)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("BLITZEN_SECRET")
        .output()
        .expect("pytest runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pytest failed ({}):\n{text}", out.status);
    assert!(!text.contains(" skipped"), "no test may be skipped here:\n{text}");
    println!("{text}");
}
