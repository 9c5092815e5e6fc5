//! Peers written by others: Python 3 with its own `socket` module, and Twisted in a
//! virtual environment that `.ci/run` installs under `target/twisted-venv`.
//!
//! The tests that need Twisted are `#[ignore]`d (a plain `cargo test` lists them as
//! ignored, with the reason): run on request, a missing Twisted fails them. Python 3 is on
//! nearly every machine, so the tests that need only it run by default; where it is
//! missing such a test prints a `skipped:` line saying why and passes, unless
//! `TWINE_REQUIRE_PEERS=1` is set (`.ci/run` sets it where Python 3 is installed), where it
//! fails.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::run_to_end;

/// The folder of the peer scripts, `tests/peers/`.
pub fn script(name: &str) -> PathBuf {
    super::root().join("tests").join("peers").join(name)
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

/// Python 3 (`$TWINE_PYTHON`, else `python3` on the PATH), or why there is none.
fn find_python3() -> Result<PathBuf, String> {
    let python = std::env::var("TWINE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    python_runs(
        &python,
        "import socket, sys; assert sys.version_info >= (3, 8)",
    )
    .map(|()| PathBuf::from(&python))
    .map_err(|e| format!("no usable Python 3: {e}"))
}

/// Python 3, or `None` after printing why the test is skipped (for the tests that run by
/// default).
pub fn python3(test: &str) -> Option<PathBuf> {
    found_or_skip(find_python3(), test)
}

/// Python 3, for an ignored test run on request: a missing one fails it.
#[track_caller]
pub fn python3_required(test: &str) -> PathBuf {
    match find_python3() {
        Ok(python) => python,
        Err(why) => panic!("{test} needs Python 3: {why}"),
    }
}

/// The Python of the Twisted virtual environment (`$TWINE_TWISTED_PYTHON`, else
/// `target/twisted-venv/bin/python`). The tests that need it are ignored unless asked
/// for, so a missing one fails the test, saying how to install it.
#[track_caller]
pub fn twisted(test: &str) -> PathBuf {
    let python = std::env::var("TWINE_TWISTED_PYTHON").unwrap_or_else(|_| {
        super::root()
            .join("target/twisted-venv/bin/python")
            .display()
            .to_string()
    });
    match python_runs(&python, "import twisted.internet.reactor") {
        Ok(()) => PathBuf::from(python),
        Err(e) => panic!(
            "{test} needs Twisted: {e}; `bash .ci/twisted-venv` installs it under target/ \
             (or point TWINE_TWISTED_PYTHON at a Python that has it)"
        ),
    }
}
