//! How every Umbra binary ends on an error: one line per distinct cause on stderr and exit
//! status 1, never a backtrace (a user's mistake is not a crash, whatever `RUST_BACKTRACE`
//! says). The binaries' `main` returns [`code`] of their real work.

use std::error::Error;
use std::process::ExitCode;

/// Success, or the error printed as [`described`] and status 1.
pub fn code<E>(result: Result<(), E>) -> ExitCode
where
    E: AsRef<dyn Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", described(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `error: TOP`, then `  because: CAUSE` for each cause whose words the line before does not
/// already carry (errors often repeat their source in their own message).
pub fn described(error: &(dyn Error + 'static)) -> String {
    let mut out = format!("error: {error}");
    let mut previous = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !previous.contains(&text) {
            out.push_str("\n  because: ");
            out.push_str(&text);
        }
        previous = text;
        cause = next.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::described;

    #[test]
    fn an_error_is_its_causes_once_each() {
        let inner = std::io::Error::other("connection refused");
        let error = anyhow::Error::new(inner)
            .context("the API at https://127.0.0.1:9 did not answer: connection refused")
            .context("applying plan.toml");
        assert_eq!(
            described(error.as_ref()),
            "error: applying plan.toml\n  because: the API at https://127.0.0.1:9 did not answer: connection refused"
        );
    }
}
