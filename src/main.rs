//! The `metrics` binary: server and client in one. All the work is in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    metrics::run(std::env::args_os())
}
