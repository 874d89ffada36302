//! The Python package's pytest suite (`python/tests`), on a real CPython, as part of the test
//! suite.
//!
//! The test takes the extension module that the test build made beside it (this package's
//! library), lays the package out in a folder of its own (`blitzen/*.py` and
//! `blitzen/_native.abi3.so`), and runs pytest in the virtual environment that `./test.sh` makes
//! with `python/tests/requirements.txt` (`BLITZEN_TEST_PYTHON` names another interpreter that has
//! them). `BLITZEN_PYTEST_JUNIT` names a file for pytest's JUnit report, from which `./test.sh`
//! counts and times each pytest case.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `python/`.
fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The extension module: this package's library, which cargo builds beside this test (in
/// `target/<profile>/deps/`, as `lib_native.so`) before the test itself.
fn extension_module() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let module = exe.with_file_name("lib_native.so");
    assert!(
        module.exists(),
        "{} is missing: `cargo test -p blitzen-python` builds it with this test",
        module.display()
    );
    module
}

/// The package as Python imports it (and mypy reads it): the sources, their stubs and the
/// built module, side by side.
fn stage(library: &Path, into: &Path) -> PathBuf {
    let package = into.join("blitzen");
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(&package).expect("staging folder");
    let sources = package_dir().join("blitzen");
    for entry in std::fs::read_dir(&sources).expect("python/blitzen") {
        let path = entry.expect("entry").path();
        // The sources, their type stubs and the marker that says the package has them.
        let shipped = path.extension().is_some_and(|e| e == "py" || e == "pyi")
            || path.file_name().is_some_and(|n| n == "py.typed");
        if shipped {
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
    let library = extension_module();
    let site = stage(&library, &scratch.join("python-package"));
    let tests = package_dir().join("tests");
    let mut pytest = Command::new(&python);
    pytest.current_dir(&tests).args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "."]);
    if let Some(report) = std::env::var_os("BLITZEN_PYTEST_JUNIT") {
        pytest.arg("--junitxml").arg(report);
    }
    // The server binary the workspace builds, for the tests that ask it for the status.
    let target =
        std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.to_path_buf()));
    if let Some(server) = target.map(|t| t.join("blitzen-server")).filter(|s| s.exists()) {
        pytest.env("BLITZEN_SERVER_BIN", server);
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
