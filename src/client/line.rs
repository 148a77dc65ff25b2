//! Reading the text form of keys, values and client operations.
//!
//! Keys and values are arbitrary bytes, but they have to be shown to users
//! and written into dump files as text, escaped by [`escape`](crate::text::escape) (in
//! [`crate::text`], which the server uses too). The scheme is round-trippable:
//! `unescape(escape(b))` always gives back exactly `b`, so anything the client
//! prints or a dump contains can be typed or read back in without loss.
//!
//! This module parses it back, and the operation lines of the interactive
//! client (`P "key" "value"`, `G "key"`, `D "key"`) and the already split
//! words of the one-shot mode.

#[cfg(test)]
use crate::text::{escape, quote};

/// Why an operation line or an escaped string could not be parsed.
///
/// The messages are short details meant to be embedded in a larger message
/// by the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    /// No operation was given at all (one-shot mode with no words).
    #[error("missing operation")]
    MissingOperation,
    /// The operation is not one of `P`, `G` or `D`.
    #[error("unknown operation {0:?} (expected P, G or D)")]
    UnknownOperation(String),
    /// Two tokens were not separated by a space or a tab.
    #[error("missing whitespace between arguments")]
    MissingWhitespace,
    /// An argument did not start with a double quote.
    #[error("expected a quoted string, found {0}")]
    ExpectedQuote(String),
    /// A quoted string had no closing double quote.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// A backslash was followed by something that is not a known escape.
    #[error("bad escape {0}")]
    BadEscape(String),
    /// A backslash was the last character of a quoted string.
    #[error("backslash at end of string")]
    DanglingBackslash,
    /// A double quote appeared inside a string without a backslash.
    #[error("unescaped double quote inside string")]
    UnescapedQuote,
    /// The key was empty.
    #[error("empty key")]
    EmptyKey,
    /// The operation got the wrong number of arguments.
    #[error("{op} takes {expected} {}, found {found}", arguments(*.expected))]
    WrongArity {
        /// The operation letter (always uppercase).
        op: char,
        /// How many arguments the operation takes.
        expected: usize,
        /// How many arguments were given.
        found: usize,
    },
    /// Something that is not a quoted string followed the last argument.
    #[error("trailing characters {0}")]
    TrailingJunk(String),
}

/// Singular or plural of "argument" for error messages.
fn arguments(n: usize) -> &'static str {
    if n == 1 { "argument" } else { "arguments" }
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Store `value` under `key`.
    Put {
        /// The key (never empty).
        key: Vec<u8>,
        /// The value (may be empty).
        value: Vec<u8>,
    },
    /// Read the value stored under `key`.
    Get {
        /// The key (never empty).
        key: Vec<u8>,
    },
    /// Delete `key`.
    Del {
        /// The key (never empty).
        key: Vec<u8>,
    },
}

/// Result of parsing one line of interactive input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A blank line or a comment (first non-blank character is `#`).
    Empty,
    /// An operation to run.
    Command(Command),
}

/// Turns the inside of a quoted string back into bytes.
///
/// Accepts `\"`, `\\`, `\n`, `\t` and `\xNN` (upper or lower case hex).
/// Any other character is taken literally as its UTF-8 bytes, except a bare
/// `"`, which is an error, as is an unknown escape or a backslash at the end.
pub fn unescape(s: &str) -> Result<Vec<u8>, LineError> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Err(LineError::UnescapedQuote),
            '\\' => match chars.next() {
                None => return Err(LineError::DanglingBackslash),
                Some('"') => out.push(b'"'),
                Some('\\') => out.push(b'\\'),
                Some('n') => out.push(b'\n'),
                Some('t') => out.push(b'\t'),
                Some('x') => {
                    let hi = chars.next();
                    let lo = chars.next();
                    match (hex_value(hi), hex_value(lo)) {
                        (Some(h), Some(l)) => out.push((h << 4) | l),
                        _ => {
                            let mut shown = String::from("\\x");
                            shown.extend(hi);
                            shown.extend(lo);
                            return Err(LineError::BadEscape(shown));
                        }
                    }
                }
                Some(other) => return Err(LineError::BadEscape(format!("\\{other}"))),
            },
            _ => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    Ok(out)
}

/// Value of one hex digit, if `c` is one.
fn hex_value(c: Option<char>) -> Option<u8> {
    let digit = c?.to_digit(16)?;
    u8::try_from(digit).ok()
}

/// Whether `b` separates tokens on an operation line.
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses one line of interactive input.
///
/// The grammar is an operation letter (`P`, `G` or `D`, uppercase) followed
/// by two (`P`) or one (`G`, `D`) quoted strings, each preceded by at least
/// one space or tab: `P "key" "value"`, `G "key"`, `D "key"`. Quoted strings
/// use the escapes of [`unescape`]. Leading and trailing blanks and a
/// trailing `\r` or `\n` are ignored. Blank lines and lines whose first
/// non-blank character is `#` give [`Parsed::Empty`]. The key must not be
/// empty; the value may be.
pub fn parse_line(line: &str) -> Result<Parsed, LineError> {
    let line = line.trim_start_matches([' ', '\t']).trim_end_matches([' ', '\t', '\r', '\n']);
    if line.is_empty() || line.starts_with('#') {
        return Ok(Parsed::Empty);
    }

    let bytes = line.as_bytes();
    // Length of the first token: up to a blank or an opening quote.
    let op_len = bytes.iter().position(|&b| is_blank(b) || b == b'"').unwrap_or(bytes.len());
    let op = match &line[..op_len] {
        "P" => 'P',
        "G" => 'G',
        "D" => 'D',
        // `op_len` can only be 0 here if the line starts with a quote.
        "" => return Err(LineError::UnknownOperation(line.to_string())),
        other => return Err(LineError::UnknownOperation(other.to_string())),
    };
    let expected = if op == 'P' { 2 } else { 1 };

    let mut args: Vec<Vec<u8>> = Vec::new();
    let mut pos = op_len;
    loop {
        let start = pos;
        while pos < bytes.len() && is_blank(bytes[pos]) {
            pos += 1;
        }
        if pos == bytes.len() {
            break;
        }
        if pos == start {
            return Err(LineError::MissingWhitespace);
        }
        if bytes[pos] != b'"' {
            let rest = line[pos..].to_string();
            return Err(if args.len() < expected {
                LineError::ExpectedQuote(rest)
            } else {
                LineError::TrailingJunk(rest)
            });
        }
        let (arg, next) = quoted_at(line, pos)?;
        args.push(arg);
        pos = next;
    }

    if args.len() != expected {
        return Err(LineError::WrongArity { op, expected, found: args.len() });
    }
    let mut args = args.into_iter();
    let key = args.next().unwrap_or_default();
    let value = args.next().unwrap_or_default();
    make_command(op, key, value).map(Parsed::Command)
}

/// Reads the quoted string whose opening quote is at byte `open` of `line`.
///
/// Returns the unescaped bytes and the byte position just after the closing
/// quote.
fn quoted_at(line: &str, open: usize) -> Result<(Vec<u8>, usize), LineError> {
    let bytes = line.as_bytes();
    let start = open + 1;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            // Skip the escaped byte so that `\"` does not close the string.
            // `"` and `\` are ASCII, so every index we stop at is a char
            // boundary even in UTF-8 text.
            b'\\' => i += 2,
            b'"' => return Ok((unescape(&line[start..i])?, i + 1)),
            _ => i += 1,
        }
    }
    Err(LineError::UnterminatedQuote)
}

/// Builds a command after arity has been checked, rejecting an empty key.
fn make_command(op: char, key: Vec<u8>, value: Vec<u8>) -> Result<Command, LineError> {
    if key.is_empty() {
        return Err(LineError::EmptyKey);
    }
    Ok(match op {
        'P' => Command::Put { key, value },
        'G' => Command::Get { key },
        _ => Command::Del { key },
    })
}

/// Parses an operation already split into words by a shell (one-shot mode).
///
/// Accepts `["P", key, value]`, `["G", key]` and `["D", key]`, with the
/// letter in upper or lower case. Keys and values are taken as raw bytes:
/// no quotes and no escapes. The key must not be empty; the value may be.
pub fn parse_words(words: &[String]) -> Result<Command, LineError> {
    let Some((first, rest)) = words.split_first() else {
        return Err(LineError::MissingOperation);
    };
    let op = match first.as_str() {
        "P" | "p" => 'P',
        "G" | "g" => 'G',
        "D" | "d" => 'D',
        other => return Err(LineError::UnknownOperation(other.to_string())),
    };
    let expected = if op == 'P' { 2 } else { 1 };
    if rest.len() != expected {
        return Err(LineError::WrongArity { op, expected, found: rest.len() });
    }
    let key = rest.first().map(|w| w.as_bytes().to_vec()).unwrap_or_default();
    let value = rest.get(1).map(|w| w.as_bytes().to_vec()).unwrap_or_default();
    make_command(op, key, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic xorshift generator so tests need no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = 1 + self.below(max_len);
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn put(k: &[u8], v: &[u8]) -> Parsed {
        Parsed::Command(Command::Put { key: k.to_vec(), value: v.to_vec() })
    }

    fn get(k: &[u8]) -> Parsed {
        Parsed::Command(Command::Get { key: k.to_vec() })
    }

    fn del(k: &[u8]) -> Parsed {
        Parsed::Command(Command::Del { key: k.to_vec() })
    }

    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| w.to_string()).collect()
    }

    fn assert_round_trip(k: &[u8], v: &[u8]) {
        assert_eq!(unescape(&escape(k)).as_deref(), Ok(k), "escape {k:?}");
        assert_eq!(unescape(&escape(v)).as_deref(), Ok(v), "escape {v:?}");
        let line = format!("P {} {}", quote(k), quote(v));
        assert_eq!(parse_line(&line), Ok(put(k, v)), "line {line}");
    }

    #[test]
    fn round_trip_all_single_bytes() {
        for b in 0..=255u8 {
            assert_round_trip(&[b], &[b]);
            let line = format!("G {}", quote(&[b]));
            assert_eq!(parse_line(&line), Ok(get(&[b])));
        }
    }

    #[test]
    fn round_trip_all_bytes_in_one_string() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut reversed = all.clone();
        reversed.reverse();
        assert_round_trip(&all, &reversed);
    }

    #[test]
    fn round_trip_random_byte_strings() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let k = rng.bytes(64);
            let v = rng.bytes(64);
            assert_round_trip(&k, &v);
        }
    }

    #[test]
    fn round_trip_tricky_strings() {
        let cases: &[&[u8]] = &[
            b"\\",
            b"\\\\",
            b"\"",
            b"\\\"",
            b"\\x41",
            b"\\n",
            b"a b\tc\r\n",
            b"# not a comment",
            "clé ✓".as_bytes(),
            b"\xc3",
            b"\xff\xfe\x00",
        ];
        for &k in cases {
            assert_round_trip(k, k);
        }
    }

    #[test]
    fn escape_each_special_byte() {
        assert_eq!(escape(b"\""), "\\\"");
        assert_eq!(escape(b"\\"), "\\\\");
        assert_eq!(escape(b"\n"), "\\n");
        assert_eq!(escape(b"\t"), "\\t");
        assert_eq!(escape(b"\r"), "\\x0d");
        assert_eq!(escape(b"\0"), "\\x00");
        assert_eq!(escape(b"\x1f"), "\\x1f");
        assert_eq!(escape(b"\x7f"), "\\x7f");
        assert_eq!(escape(b"\x80"), "\\x80");
        assert_eq!(escape(b"\xab\xff"), "\\xab\\xff");
        assert_eq!(escape("é".as_bytes()), "\\xc3\\xa9");
    }

    #[test]
    fn escape_keeps_printable_ascii() {
        let printable: Vec<u8> = (0x20..=0x7eu8).filter(|&b| b != b'"' && b != b'\\').collect();
        assert_eq!(escape(&printable).as_bytes(), printable.as_slice());
        assert_eq!(escape(b""), "");
    }

    #[test]
    fn quote_wraps_in_double_quotes() {
        assert_eq!(quote(b"a\"b"), "\"a\\\"b\"");
        assert_eq!(quote(b""), "\"\"");
    }

    #[test]
    fn unescape_each_escape() {
        assert_eq!(unescape("\\\""), Ok(b"\"".to_vec()));
        assert_eq!(unescape("\\\\"), Ok(b"\\".to_vec()));
        assert_eq!(unescape("\\n"), Ok(b"\n".to_vec()));
        assert_eq!(unescape("\\t"), Ok(b"\t".to_vec()));
        assert_eq!(unescape("\\x00"), Ok(vec![0]));
        assert_eq!(unescape("\\xab\\xAB\\xaB"), Ok(vec![0xab, 0xab, 0xab]));
        assert_eq!(unescape(""), Ok(vec![]));
    }

    #[test]
    fn unescape_takes_utf8_literally() {
        assert_eq!(unescape("clé ✓"), Ok("clé ✓".as_bytes().to_vec()));
    }

    #[test]
    fn unescape_errors() {
        assert_eq!(unescape("\\q"), Err(LineError::BadEscape("\\q".into())));
        assert_eq!(unescape("\\r"), Err(LineError::BadEscape("\\r".into())));
        assert_eq!(unescape("\\é"), Err(LineError::BadEscape("\\é".into())));
        assert_eq!(unescape("\\x4"), Err(LineError::BadEscape("\\x4".into())));
        assert_eq!(unescape("\\x"), Err(LineError::BadEscape("\\x".into())));
        assert_eq!(unescape("\\xzz"), Err(LineError::BadEscape("\\xzz".into())));
        assert_eq!(unescape("ab\\"), Err(LineError::DanglingBackslash));
        assert_eq!(unescape("a\"b"), Err(LineError::UnescapedQuote));
    }

    #[test]
    fn parse_each_operation() {
        assert_eq!(parse_line("P \"k\" \"v\""), Ok(put(b"k", b"v")));
        assert_eq!(parse_line("G \"k\""), Ok(get(b"k")));
        assert_eq!(parse_line("D \"k\""), Ok(del(b"k")));
        assert_eq!(
            parse_line("P \"a\\x00\\\"b\" \"line\\nnext\""),
            Ok(put(b"a\0\"b", b"line\nnext"))
        );
    }

    #[test]
    fn parse_blank_and_comment_lines() {
        for line in ["", "   ", "\t \t", "\r\n", "#", "# comment", "  \t# P \"x\""] {
            assert_eq!(parse_line(line), Ok(Parsed::Empty), "{line:?}");
        }
    }

    #[test]
    fn parse_with_tabs_and_extra_blanks() {
        assert_eq!(parse_line("P\t\"k\"\t\"v\""), Ok(put(b"k", b"v")));
        assert_eq!(parse_line("  \tG  \t \"k\"  \t"), Ok(get(b"k")));
    }

    #[test]
    fn parse_tolerates_crlf() {
        assert_eq!(parse_line("G \"k\"\r"), Ok(get(b"k")));
        assert_eq!(parse_line("P \"k\" \"v\"\r\n"), Ok(put(b"k", b"v")));
    }

    #[test]
    fn parse_utf8_literal() {
        assert_eq!(
            parse_line("P \"clé\" \"värde ✓\""),
            Ok(put("clé".as_bytes(), "värde ✓".as_bytes()))
        );
    }

    #[test]
    fn parse_allows_empty_value() {
        assert_eq!(parse_line("P \"k\" \"\""), Ok(put(b"k", b"")));
    }

    #[test]
    fn parse_unknown_operation() {
        let unknown = |s: &str| Err(LineError::UnknownOperation(s.into()));
        assert_eq!(parse_line("X \"k\""), unknown("X"));
        assert_eq!(parse_line("p \"k\" \"v\""), unknown("p"));
        assert_eq!(parse_line("g \"k\""), unknown("g"));
        assert_eq!(parse_line("PUT \"k\" \"v\""), unknown("PUT"));
        assert_eq!(parse_line("\"k\""), unknown("\"k\""));
    }

    #[test]
    fn parse_missing_whitespace() {
        assert_eq!(parse_line("G\"k\""), Err(LineError::MissingWhitespace));
        assert_eq!(parse_line("P \"k\"\"v\""), Err(LineError::MissingWhitespace));
        assert_eq!(parse_line("G \"k\"x"), Err(LineError::MissingWhitespace));
    }

    #[test]
    fn parse_unterminated_quote() {
        assert_eq!(parse_line("G \"abc"), Err(LineError::UnterminatedQuote));
        assert_eq!(parse_line("G \"abc\\\""), Err(LineError::UnterminatedQuote));
        assert_eq!(parse_line("G \"abc\\"), Err(LineError::UnterminatedQuote));
        assert_eq!(parse_line("P \"k\" \"v"), Err(LineError::UnterminatedQuote));
        assert_eq!(parse_line("G \""), Err(LineError::UnterminatedQuote));
    }

    #[test]
    fn parse_wrong_arity() {
        let arity = |op, expected, found| Err(LineError::WrongArity { op, expected, found });
        assert_eq!(parse_line("G"), arity('G', 1, 0));
        assert_eq!(parse_line("D  "), arity('D', 1, 0));
        assert_eq!(parse_line("P"), arity('P', 2, 0));
        assert_eq!(parse_line("P \"k\""), arity('P', 2, 1));
        assert_eq!(parse_line("G \"a\" \"b\""), arity('G', 1, 2));
        assert_eq!(parse_line("D \"a\" \"b\""), arity('D', 1, 2));
        assert_eq!(parse_line("P \"a\" \"b\" \"c\""), arity('P', 2, 3));
    }

    #[test]
    fn parse_empty_key() {
        assert_eq!(parse_line("G \"\""), Err(LineError::EmptyKey));
        assert_eq!(parse_line("D \"\""), Err(LineError::EmptyKey));
        assert_eq!(parse_line("P \"\" \"v\""), Err(LineError::EmptyKey));
    }

    #[test]
    fn parse_trailing_junk() {
        assert_eq!(parse_line("G \"k\" junk"), Err(LineError::TrailingJunk("junk".into())));
        assert_eq!(
            parse_line("P \"k\" \"v\" # note"),
            Err(LineError::TrailingJunk("# note".into()))
        );
    }

    #[test]
    fn parse_expected_quote() {
        assert_eq!(parse_line("G key"), Err(LineError::ExpectedQuote("key".into())));
        assert_eq!(parse_line("P \"k\" v"), Err(LineError::ExpectedQuote("v".into())));
    }

    #[test]
    fn parse_bad_escape() {
        assert_eq!(parse_line("G \"a\\qb\""), Err(LineError::BadEscape("\\q".into())));
        assert_eq!(parse_line("P \"k\" \"\\x4g\""), Err(LineError::BadEscape("\\x4g".into())));
    }

    #[test]
    fn parse_never_panics_on_random_input() {
        let alphabet = [
            "P", "G", "D", "p", "#", " ", "\t", "\r", "\n", "\"", "\\", "x", "0", "f", "Z", "é",
            "✓", "n", "t", "\0",
        ];
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let len = rng.below(16);
            let s: String = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            let _ = parse_line(&s);
            let _ = unescape(&s);
        }
    }

    #[test]
    fn words_each_operation() {
        let expect = |p: Parsed| match p {
            Parsed::Command(c) => Ok(c),
            Parsed::Empty => unreachable!(),
        };
        assert_eq!(parse_words(&words(&["P", "k", "v"])), expect(put(b"k", b"v")));
        assert_eq!(parse_words(&words(&["p", "k", ""])), expect(put(b"k", b"")));
        assert_eq!(parse_words(&words(&["G", "k"])), expect(get(b"k")));
        assert_eq!(parse_words(&words(&["g", "k"])), expect(get(b"k")));
        assert_eq!(parse_words(&words(&["D", "k"])), expect(del(b"k")));
        assert_eq!(parse_words(&words(&["d", "k"])), expect(del(b"k")));
        // Raw bytes: quotes and backslashes are not interpreted.
        assert_eq!(parse_words(&words(&["G", "\"a\\n\" é"])), expect(get("\"a\\n\" é".as_bytes())));
    }

    #[test]
    fn words_errors() {
        assert_eq!(parse_words(&[]), Err(LineError::MissingOperation));
        assert_eq!(parse_words(&words(&["X", "k"])), Err(LineError::UnknownOperation("X".into())));
        assert_eq!(
            parse_words(&words(&["put", "k", "v"])),
            Err(LineError::UnknownOperation("put".into()))
        );
        assert_eq!(parse_words(&words(&["G", ""])), Err(LineError::EmptyKey));
        assert_eq!(parse_words(&words(&["p", "", "v"])), Err(LineError::EmptyKey));
        assert_eq!(
            parse_words(&words(&["p", "k"])),
            Err(LineError::WrongArity { op: 'P', expected: 2, found: 1 })
        );
        assert_eq!(
            parse_words(&words(&["D", "a", "b"])),
            Err(LineError::WrongArity { op: 'D', expected: 1, found: 2 })
        );
        assert_eq!(
            parse_words(&words(&["G"])),
            Err(LineError::WrongArity { op: 'G', expected: 1, found: 0 })
        );
    }

    #[test]
    fn error_messages_are_short_and_specific() {
        let cases = [
            (LineError::UnterminatedQuote, "unterminated quoted string"),
            (LineError::BadEscape("\\q".into()), "bad escape \\q"),
            (LineError::EmptyKey, "empty key"),
            (
                LineError::UnknownOperation("X".into()),
                "unknown operation \"X\" (expected P, G or D)",
            ),
            (
                LineError::WrongArity { op: 'G', expected: 1, found: 2 },
                "G takes 1 argument, found 2",
            ),
            (
                LineError::WrongArity { op: 'P', expected: 2, found: 1 },
                "P takes 2 arguments, found 1",
            ),
            (LineError::TrailingJunk("junk".into()), "trailing characters junk"),
            (LineError::ExpectedQuote("key".into()), "expected a quoted string, found key"),
            (LineError::MissingWhitespace, "missing whitespace between arguments"),
        ];
        for (err, msg) in cases {
            assert_eq!(err.to_string(), msg);
            assert!(!msg.contains("Invalid operation format"));
        }
    }
}
