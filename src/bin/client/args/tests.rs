//! Which form each command line takes; the runs themselves are in tests/cli.rs.

use super::*;

fn parse(words: &[&str]) -> Args {
    Args::try_parse_from(std::iter::once("client").chain(words.iter().copied()))
        .unwrap_or_else(|e| panic!("{words:?}: {e}"))
}

#[test]
fn global_options_on_either_side_of_a_command() {
    for words in [
        &["-h", "db1", "-p", "7000", "-l", "c.log", "--timeout", "3", "watch"][..],
        &["watch", "-h", "db1", "-p", "7000", "-l", "c.log", "--timeout", "3"],
        &["-h", "db1", "watch", "-p", "7000", "--timeout", "3", "-l", "c.log"],
    ] {
        let args = parse(words);
        assert!(matches!(args.command, Some(Cmd::Watch)), "{words:?}");
        assert_eq!(args.global.host, "db1", "{words:?}");
        assert_eq!(args.global.port, Some(7000), "{words:?}");
        assert_eq!(args.global.log.as_deref(), Some(std::path::Path::new("c.log")));
        assert_eq!(args.global.timeout, 3.0, "{words:?}");
    }
    let args = parse(&["status", "--json", "-p", "1"]);
    assert!(matches!(args.command, Some(Cmd::Status { json: true })));
    assert_eq!(args.global.host, "localhost", "the default when -h is on neither side");
}

#[test]
fn bench_takes_its_own_options_and_the_global_ones() {
    let args = parse(&["bench", "-n", "10", "-p", "7000", "-P", "4", "-h", "x", "-t", "get"]);
    let Some(Cmd::Bench(bench)) = args.command else { panic!("{args:?}") };
    assert_eq!((bench.requests, bench.pipeline, bench.tests), (10, 4, vec![BenchOp::Get]));
    assert_eq!((args.global.host.as_str(), args.global.port), ("x", Some(7000)));
}

#[test]
fn operations_as_words_and_the_repl_are_as_before() {
    let args = parse(&["-p", "7000", "P", "status", "-p"]);
    assert!(args.command.is_none());
    assert_eq!(args.words, ["P", "status", "-p"], "after the operation, every word is its own");
    let args = parse(&["-p", "7000", "G", "watch"]);
    assert_eq!((args.command.is_none(), args.words.len()), (true, 2));
    let args = parse(&["-h", "a:1,b:2", "-p", "7000", "-f", "ops.txt"]);
    assert!(args.command.is_none() && args.words.is_empty());
    assert_eq!(args.file.as_deref(), Some(std::path::Path::new("ops.txt")));
    let args = parse(&["-p", "7000", "help"]);
    assert_eq!(args.words, ["help"], "no help subcommand: an unknown operation, as before");
}

#[test]
fn a_bad_command_option_is_a_clap_error() {
    for (words, kind) in [
        (&["status", "--jsn"][..], ErrorKind::UnknownArgument),
        (&["watch", "extra"], ErrorKind::UnknownArgument),
        (&["bench", "-t", "del"], ErrorKind::ValueValidation),
        (&["bench", "-n", "1", "--duration", "1"], ErrorKind::ArgumentConflict),
        (&["status", "-f", "ops.txt"], ErrorKind::UnknownArgument),
    ] {
        let e = Args::try_parse_from(std::iter::once("client").chain(words.iter().copied()))
            .expect_err(&format!("{words:?}"));
        assert_eq!(e.kind(), kind, "{words:?}: {e}");
    }
}

#[test]
fn every_command_has_long_help_only() {
    Args::command().debug_assert();
    for name in ["status", "watch", "bench"] {
        let e = Args::try_parse_from(["client", name, "--help"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{name}");
        let help = e.to_string();
        assert!(help.contains(&format!("client {name}")), "{name}: {help}");
        assert!(help.contains("-h, --host") && !help.contains("-h, --help"), "{name}: {help}");
    }
}
