//! Where a session's lines come from: a terminal, through a line editor (rustyline) with a
//! history file, `help` and `quit`; or a pipe or file, line by line, as the original read
//! them.
//!
//! On a terminal every line pasted or typed ahead runs, in order:
//! - the editor keeps the bytes it read past the line it returns (rustyline's `buffer-redux`
//!   feature; without it, a paste of three lines ran the first and dropped the others, which
//!   had been read into a buffer thrown away with the line);
//! - keys typed while an operation runs wait in the kernel's buffer and the editor reads them
//!   next (`TypeAhead`);
//! - a bracketed paste (the terminal marks pasted text) is taken as typed, so each pasted
//!   line runs at once; rustyline's own handling inserted the whole paste into one line, which
//!   was then one invalid operation. A text that reaches the editor as one line with newlines
//!   in it still runs one line at a time.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use futures::FutureExt;
use nix::sys::termios::{LocalFlags, SetArg, Termios, tcgetattr, tcsetattr};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Cmd, Config, Editor, KeyCode, KeyEvent, Modifiers};
use tokio::runtime::Runtime;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::client::session::Session;

/// The file name of the history in the home directory (as redis-cli's `.rediscli_history`).
pub const HISTORY_FILE: &str = ".ftkv_history";
/// Overrides where the history is kept (tests point it at a temporary directory).
pub const HISTORY_VAR: &str = "FTKV_HISTORY";
/// Lines kept in the history file.
const HISTORY_LINES: usize = 1000;

/// What `help` prints, after which the history file is named.
pub const HELP: &str = r#"Operations, one per line (keys and values in double quotes):
  P "key" "value"   store value under key
  G "key"           print the value stored under key
  D "key"           delete key
Escapes inside quotes: \" \\ \n (newline) \t (tab) \xNN (any byte, two hex digits).
Blank lines and lines starting with # are skipped.
  help              this text
  quit, exit        leave (ctrl+d too)
ctrl+c drops the line being typed, or abandons the operation that runs.
Pasted lines run one after the other; up and down arrows recall earlier lines."#;

/// Where the history is kept: `$FTKV_HISTORY` if set and not empty, else
/// `$HOME/.ftkv_history`; nowhere without either.
pub fn history_path() -> Option<PathBuf> {
    let set = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    set(HISTORY_VAR)
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|home| Path::new(&home).join(HISTORY_FILE)))
}

/// Runs lines from a pipe or a file, one at a time, with no prompt and no editor.
pub fn run_lines(
    runtime: &Runtime,
    session: &mut Session,
    input: impl BufRead,
) -> Result<(), String> {
    for line in input.split(b'\n') {
        let line = line.map_err(|e| format!("reading input: {e}"))?;
        match std::str::from_utf8(&line) {
            Ok(line) => runtime.block_on(session.run_line(line)),
            // Never stored altered: raw bytes would have become U+FFFD.
            Err(_) => session.reject_line("not UTF-8 text: write other bytes as \\xNN"),
        }
    }
    Ok(())
}

/// The interactive session on a terminal, until `quit`, `exit` or ctrl+d.
pub fn run_terminal(runtime: &Runtime, session: &mut Session) -> Result<(), String> {
    let mut editor = editor().map_err(|e| format!("line editor: {e}"))?;
    let _typed_ahead = TypeAhead::hold();
    let mut history = History::load(&mut editor, history_path());
    let mut sigint = {
        let _context = runtime.enter();
        signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?
    };
    loop {
        let text = match editor.readline("> ") {
            Ok(text) => text,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(format!("reading the terminal: {e}")),
        };
        for line in text.split('\n') {
            history.add(&mut editor, line);
            match Word::of(line) {
                Word::Quit => return Ok(()),
                Word::Help => println!("{}", help_text(history.path.as_deref())),
                Word::Operation => run_operation(runtime, session, &mut sigint, line),
            }
        }
    }
}

/// Runs one line; ctrl+c (SIGINT: the terminal's signals are on while it runs) abandons it.
fn run_operation(runtime: &Runtime, session: &mut Session, sigint: &mut Signal, line: &str) {
    runtime.block_on(async {
        // A SIGINT from before (sent by another process) is not this operation's.
        while let Some(Some(())) = sigint.recv().now_or_never() {}
        tokio::select! {
            biased;
            () = session.run_line(line) => {}
            _ = sigint.recv() => session.interrupted(),
        }
    });
}

/// The terminal for the whole session, out of canonical mode: the editor switches it to raw
/// mode while it reads a line and back to this, so while an operation runs what is typed
/// stays bytes in the kernel's buffer for the editor to read next, as it would have read
/// them. In canonical mode the kernel itself took a ctrl+d typed then as an end of file that
/// the editor never saw. Echo stays on (what is typed ahead shows at once) and so do signals
/// (ctrl+c interrupts the operation, and the kernel drops what was typed ahead with it). Put
/// back as it was when dropped (at `quit`, ctrl+d or an error).
struct TypeAhead {
    saved: Option<Termios>,
}

impl TypeAhead {
    fn hold() -> TypeAhead {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut held = saved.clone();
            held.local_flags.remove(LocalFlags::ICANON | LocalFlags::IEXTEN);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &held);
        }
        TypeAhead { saved }
    }
}

impl Drop for TypeAhead {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // TCSANOW, not TCSAFLUSH: what was typed ahead stays.
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

/// `help`'s text, with where the history is kept.
pub fn help_text(history: Option<&Path>) -> String {
    match history {
        Some(path) => format!("{HELP}\nHistory file: {}", path.display()),
        None => format!("{HELP}\nNo history file (neither ${HISTORY_VAR} nor $HOME is set)."),
    }
}

/// The editor: history without duplicates in a row, and bracketed pastes taken as typed.
fn editor() -> rustyline::Result<Editor<(), FileHistory>> {
    let config = Config::builder()
        .max_history_size(HISTORY_LINES)?
        .history_ignore_dups(true)?
        .auto_add_history(false)
        .build();
    let mut editor = Editor::with_config(config)?;
    for marker in [KeyCode::BracketedPasteStart, KeyCode::BracketedPasteEnd] {
        editor.bind_sequence(KeyEvent(marker, Modifiers::NONE), Cmd::Noop);
    }
    Ok(editor)
}

/// A line of the terminal: a word of the REPL's own, or an operation for the session.
#[derive(Debug, PartialEq, Eq)]
enum Word {
    Help,
    Quit,
    Operation,
}

impl Word {
    fn of(line: &str) -> Word {
        match line.trim().to_ascii_lowercase().as_str() {
            "help" | "?" => Word::Help,
            "quit" | "exit" => Word::Quit,
            _ => Word::Operation,
        }
    }
}

/// The history file. Each line is appended as soon as it is entered, so that a client that
/// is killed keeps its lines too. A file that cannot be read or written is said once, and the
/// session goes on without it.
struct History {
    path: Option<PathBuf>,
    /// Reading or writing it failed and was said: no more attempts.
    failed: bool,
}

impl History {
    fn load(editor: &mut Editor<(), FileHistory>, path: Option<PathBuf>) -> History {
        let mut history = History { path, failed: false };
        if let Some(path) = &history.path
            && path.exists()
            && let Err(e) = editor.load_history(path)
        {
            history.fail("read", &e);
        }
        history
    }

    fn add(&mut self, editor: &mut Editor<(), FileHistory>, line: &str) {
        if line.trim().is_empty() || !matches!(editor.add_history_entry(line), Ok(true)) {
            return;
        }
        if let Some(path) = self.path.as_ref().filter(|_| !self.failed)
            && let Err(e) = editor.append_history(path)
        {
            self.fail("write", &e);
        }
    }

    fn fail(&mut self, verb: &str, e: &ReadlineError) {
        self.failed = true;
        let path = self.path.as_deref().unwrap_or(Path::new("?")).display();
        eprintln!("client: cannot {verb} the history file {path}: {e} (going on without it)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repls_own_words() {
        assert_eq!(Word::of("help"), Word::Help);
        assert_eq!(Word::of("  HELP "), Word::Help);
        assert_eq!(Word::of("quit"), Word::Quit);
        assert_eq!(Word::of("Exit"), Word::Quit);
        assert_eq!(Word::of("G \"help\""), Word::Operation);
        assert_eq!(Word::of(""), Word::Operation);
    }

    #[test]
    fn help_names_every_operation_escape_and_the_history_file() {
        let text = help_text(Some(Path::new("/tmp/h")));
        for needle in ["P \"key\" \"value\"", "G \"key\"", "D \"key\"", "\\xNN", "quit", "/tmp/h"] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }
}
