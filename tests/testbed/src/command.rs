//! Running a program to completion and checking that it succeeded: the one helper the tests, the testbed and
//! the developer tasks use for it.

use std::process::Command;

/// Run `command` to completion: its standard output, or an error naming what ran, its exit status and everything
/// it printed.
pub fn output_of(command: &mut Command) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("could not run {command:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// `output_of`, for tests: a failure panics with what the program printed.
pub fn run(command: &mut Command) -> String {
    output_of(command).unwrap_or_else(|e| panic!("{e}"))
}
