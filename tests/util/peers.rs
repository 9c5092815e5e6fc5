//! Peers written by others: Python 3 with its own `socket` module, and Twisted in a
//! virtual environment that `.ci/run` installs under `target/twisted-venv`.
//!
//! A test whose peer is missing prints a `skipped:` line saying why and how to get it, and
//! passes; where `TWINE_REQUIRE_PEERS=1` is set (`.ci/run` sets it once it has installed
//! them), a missing peer fails the test instead.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::run_to_end;

/// The folder of the peer scripts, `tests/peers/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("peers")
        .join(name)
}

/// Runs `python -c CODE`; `Ok` if it exits 0.
fn python_runs(python: &str, code: &str) -> Result<(), String> {
    let mut cmd = Command::new(python);
    cmd.args(["-c", code]);
    let (status, _out, err) = run_to_end(cmd, Duration::from_secs(30))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{python} -c {code:?}` failed ({status}): {}",
            err.trim()
        ))
    }
}

/// Either the peer, or a test that says it was skipped (or fails, where peers are
/// required).
fn found_or_skip(peer: Result<PathBuf, String>, test: &str) -> Option<PathBuf> {
    match peer {
        Ok(p) => Some(p),
        Err(why) if std::env::var_os("TWINE_REQUIRE_PEERS").is_some_and(|v| v == "1") => {
            panic!("{test}: peer required (TWINE_REQUIRE_PEERS=1) but missing: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {test}: {why}");
            None
        }
    }
}

/// Python 3 (`$TWINE_PYTHON`, else `python3` on the PATH), or `None` after printing why
/// the test is skipped.
pub fn python3(test: &str) -> Option<PathBuf> {
    let python = std::env::var("TWINE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let found = python_runs(
        &python,
        "import socket, sys; assert sys.version_info >= (3, 8)",
    )
    .map(|()| PathBuf::from(&python))
    .map_err(|e| format!("no usable Python 3: {e}"));
    found_or_skip(found, test)
}

/// The Python of the Twisted virtual environment (`$TWINE_TWISTED_PYTHON`, else
/// `target/twisted-venv/bin/python`), or `None` after printing why the test is skipped.
pub fn twisted(test: &str) -> Option<PathBuf> {
    let python = std::env::var("TWINE_TWISTED_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/target/twisted-venv/bin/python",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let found = python_runs(&python, "import twisted.internet.reactor")
        .map(|()| PathBuf::from(&python))
        .map_err(|e| {
            format!("no Twisted ({e}); `bash .ci/twisted-venv` installs it under target/")
        });
    found_or_skip(found, test)
}
