//! The third-party programs the tests drive for real (BIND's `named`, `dig` and `nsupdate`,
//! `haproxy`, `prometheus` and `promtool`): found on the machine, or the test fails at once
//! saying how to install them. A test never skips for want of one: CI installs them all with
//! `.ci/install-deps`, and a developer can too.

use std::path::PathBuf;

use anyhow::bail;

/// Where the system keeps daemons, which a user's `PATH` may leave out (`named` is in
/// /usr/sbin).
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The path of `program`, from `PATH` or the system directories; when it is missing, an error
/// naming the Debian `package` that provides it and the script that installs them all.
pub fn installed(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file());
    match found {
        Some(path) => Ok(path),
        None => bail!(
            "`{program}` is not installed, and this test drives the real one: install it with \
             `bash .ci/install-deps` (all the tests' programs) or `apt-get install -y {package}`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_an_error_that_says_how_to_install_it() {
        let err = installed("umbra-no-such-program", "umbra-no-such-package").unwrap_err();
        let message = err.to_string();
        assert!(message.contains(".ci/install-deps"), "{message}");
        assert!(
            message.contains("apt-get install -y umbra-no-such-package"),
            "{message}"
        );
        assert!(installed("sh", "dash").unwrap().is_file());
    }
}
