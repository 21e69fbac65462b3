//! A Python client written for the protocol's course works against our server unchanged.

mod common;

use common::TestServer;
use std::process::Command;

#[test]
fn the_course_python_client_works_unchanged() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/course_client.py");
    if Command::new("python3").arg("--version").output().is_err() {
        // CI installs python3 (.ci/run); elsewhere say clearly what was not checked.
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 is required in CI"
        );
        eprintln!("python3 not found: the Python compatibility check did not run");
        return;
    }
    let server = TestServer::start();
    let output = Command::new("python3")
        .arg(script)
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
