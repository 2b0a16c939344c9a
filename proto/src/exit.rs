//! How every Umbra binary ends on an error: one line per distinct cause on stderr and exit
//! status 1, never a backtrace (a user's mistake is not a crash, whatever `RUST_BACKTRACE`
//! says), and in plain words rather than Rust's type names ([`plain_words`]). The binaries'
//! `main` returns [`code`] of their real work.

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

/// What serde's messages call by their Rust type names (`expected u32`), in words.
const TYPE_WORDS: [(&str, &str); 10] = [
    ("u8", "a whole number from 0 to 255"),
    ("u16", "a whole number from 0 to 65535"),
    ("u32", "a whole number from 0 to 4294967295"),
    ("u64", "a whole number from 0 up"),
    ("usize", "a whole number from 0 up"),
    ("i32", "a whole number"),
    ("i64", "a whole number"),
    ("f32", "a number"),
    ("f64", "a number"),
    ("char", "a single character"),
];

/// `text` with serde's `expected u32` (and the other primitive type names) said in words,
/// as a user who never read Rust would understand them.
pub fn plain_words(text: &str) -> String {
    let mut out = text.to_owned();
    for (name, words) in TYPE_WORDS {
        let typed = format!("expected {name}");
        let mut from = 0;
        while let Some(at) = out[from..].find(&typed).map(|i| i + from) {
            let end = at + typed.len();
            let whole_word = out[end..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
            if whole_word {
                let replacement = format!("expected {words}");
                out.replace_range(at..end, &replacement);
                from = at + replacement.len();
            } else {
                from = end;
            }
        }
    }
    out
}

/// `error: TOP`, then `  because: CAUSE` for each cause whose words the line before does not
/// already carry (errors often repeat their source in their own message), in plain words.
pub fn described(error: &(dyn Error + 'static)) -> String {
    plain_words(&described_raw(error))
}

fn described_raw(error: &(dyn Error + 'static)) -> String {
    format!("error: {}", causes(error).join("\n  because: "))
}

/// `TOP: CAUSE: …` on one line, each cause whose words the one before does not already carry
/// (hyper's own text alone says only "client error (Connect)"; its causes say why).
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    causes(error).join(": ")
}

/// The error's text, then each cause's whose words the text before does not already carry.
fn causes(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = vec![error.to_string()];
    let mut previous = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !previous.contains(&text) {
            out.push(text.clone());
        }
        previous = text;
        cause = next.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{described, one_line, plain_words};

    #[test]
    fn type_names_become_words() {
        assert_eq!(
            plain_words("invalid value: integer `-1`, expected u32 for key `port`"),
            "invalid value: integer `-1`, expected a whole number from 0 to 4294967295 for key `port`"
        );
        assert_eq!(
            plain_words("invalid type: string \"x\", expected f64"),
            "invalid type: string \"x\", expected a number"
        );
        // Only whole type names: a field called `u8_limit` stays as it is.
        assert_eq!(plain_words("expected u8_limit"), "expected u8_limit");
    }

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
        assert_eq!(
            one_line(error.as_ref()),
            "applying plan.toml: the API at https://127.0.0.1:9 did not answer: connection refused"
        );
    }
}
