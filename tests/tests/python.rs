//! The Python package's pytest suite (`python/tests`), on a real CPython, as part of the test
//! suite.
//!
//! The test builds the extension module, lays the package out in a folder of its own
//! (`blitzen/*.py` and `blitzen/_native.abi3.so`), and runs pytest in the virtual environment
//! that `./test.sh` makes with `python/tests/requirements.txt` (`BLITZEN_TEST_PYTHON` names
//! another interpreter that has them). `BLITZEN_PYTEST_JUNIT` names a file for pytest's JUnit
//! report, from which `./test.sh` counts and times each pytest case.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use blitzen_tests::cluster::cargo;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Builds the extension module; returns the path of the shared library.
///
/// The build names every target of the workspace, as the test suite's own build does: cargo
/// then resolves the dependencies' features as it did for the tests and builds only the module
/// itself, where `-p blitzen-python` alone would build a second copy of half the tree.
fn build_extension() -> PathBuf {
    let out = cargo()
        .current_dir(workspace())
        .args(["build", "--workspace", "--all-targets", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo build --workspace --all-targets failed");
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

/// The interpreter of the virtual environment that `./test.sh` makes, with what the suite
/// imports.
fn python() -> PathBuf {
    let python = std::env::var_os("BLITZEN_TEST_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: ./test.sh makes this virtual environment (python3 -m venv, then pip \
         install -r python/tests/requirements.txt); or set BLITZEN_TEST_PYTHON",
        python.display()
    );
    python
}

#[test]
fn the_python_package_passes_its_pytest_suite() {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let python = python();
    let library = build_extension();
    let site = stage(&library, &scratch.join("python-package"));
    let tests = workspace().join("python/tests");
    let mut pytest = Command::new(&python);
    pytest.current_dir(&tests).args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "."]);
    if let Some(report) = std::env::var_os("BLITZEN_PYTEST_JUNIT") {
        pytest.arg("--junitxml").arg(report);
    }
    let out = pytest
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
