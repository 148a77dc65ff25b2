//! Property-based fuzzing of everything that parses input from outside: the frame decoder
//! and every message type, the client's line parser, the config file parser.
//! Runs briefly in CI; for a longer run: `PROPTEST_CASES=200000 cargo nextest run --test fuzz`.

use ftkv::client::line::{parse_line, parse_words, unescape};
use ftkv::connection::{Connection, decode, encode};
use ftkv::protocol::{
    ClientRequest, ClientResponse, ControlRequest, ControlResponse, CoordRequest, CoordResponse,
    Hello, Op, ReplAck, ReplMessage, ReportRequest, ReportResponse,
};
use ftkv::text::quote;
use proptest::prelude::*;

/// Decodes `bytes` as every message type; none may panic.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<Hello>(bytes);
    let _ = decode::<ClientRequest>(bytes);
    let _ = decode::<ClientResponse>(bytes);
    let _ = decode::<ReplMessage>(bytes);
    let _ = decode::<ReplAck>(bytes);
    let _ = decode::<ControlRequest>(bytes);
    let _ = decode::<ControlResponse>(bytes);
    let _ = decode::<CoordRequest>(bytes);
    let _ = decode::<CoordResponse>(bytes);
    let _ = decode::<ReportRequest>(bytes);
    let _ = decode::<ReportResponse>(bytes);
}

fn op() -> impl Strategy<Value = Op> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (bytes(), bytes()).prop_map(|(key, value)| Op::Put { key, value }),
        bytes().prop_map(|key| Op::Get { key }),
        bytes().prop_map(|key| Op::Del { key }),
    ]
}

proptest! {
    #[test]
    fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_valid_messages_decode_without_panic(
        op in op(),
        epoch in any::<u64>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = encode(&ClientRequest { epoch, op }).unwrap().to_vec();
        for (at, value) in flips {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        decode_all(&bytes);
        decode_all(&bytes[..cut % (bytes.len() + 1)]);
    }

    #[test]
    fn messages_round_trip(op in op(), epoch in any::<u64>()) {
        let request = ClientRequest { epoch, op };
        prop_assert_eq!(decode::<ClientRequest>(&encode(&request).unwrap()).unwrap(), request);
    }

    #[test]
    fn lines_parse_without_panic(line in ".{0,80}") {
        let _ = parse_line(&line);
        let _ = unescape(&line);
        let words: Vec<String> = line.split(' ').map(String::from).collect();
        let _ = parse_words(&words);
    }

    #[test]
    fn quoted_bytes_round_trip(key in proptest::collection::vec(any::<u8>(), 1..40), value in proptest::collection::vec(any::<u8>(), 0..40)) {
        let line = format!("P {} {}", quote(&key), quote(&value));
        let parsed = parse_line(&line).unwrap();
        prop_assert_eq!(
            parsed,
            ftkv::client::line::Parsed::Command(ftkv::client::line::Command::Put { key, value })
        );
    }

    #[test]
    fn config_files_parse_without_panic(text in "([0-9a-z@. :\\-]{0,30}\n){0,8}") {
        let _ = ftkv::config::parse(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary bytes on a real socket: the reader returns messages or an error, never
    /// panics, and never waits past the end of the stream.
    #[test]
    fn any_stream_is_read_without_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use tokio::io::AsyncWriteExt;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut raw = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            let mut conn = Connection::new(accepted).unwrap();
            for chunk in &chunks {
                raw.write_all(chunk).await.unwrap();
            }
            drop(raw);
            for _ in 0..64 {
                match tokio::time::timeout(std::time::Duration::from_secs(10), conn.recv::<ClientRequest>()).await {
                    Ok(Ok(Some(_))) => continue,
                    Ok(_) => break,
                    Err(_) => panic!("reader hung after the end of the stream"),
                }
            }
        });
    }
}
