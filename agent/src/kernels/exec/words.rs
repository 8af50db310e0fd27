//! The `args` argument of exec, split into argv like a POSIX shell would
//! split it, without a shell: nothing is expanded or run.

use super::ExecError;

/// Split `s` into words like a POSIX shell would (whitespace, '…', "…",
/// backslash escapes), without expanding anything.
pub fn split_words(s: &str) -> Result<Vec<String>, ExecError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(ExecError("unbalanced ' in args".into())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(ExecError("unbalanced \" in args".into())),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(ExecError("unbalanced \" in args".into())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(ExecError("trailing backslash in args".into())),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell_without_one() {
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert_eq!(split_words(" a  b ").unwrap(), vec!["a", "b"]);
        assert_eq!(
            split_words(r#"--name "a b" 'c d' e\ f"#).unwrap(),
            vec!["--name", "a b", "c d", "e f"]
        );
        assert_eq!(
            split_words(r#""say \"hi\"" ''"#).unwrap(),
            vec![r#"say "hi""#, ""]
        );
        assert_eq!(split_words("$HOME;rm").unwrap(), vec!["$HOME;rm"]);
        assert!(split_words("'open").is_err());
        assert!(split_words("\"open").is_err());
    }
}
