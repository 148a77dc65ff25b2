//! Whole runs against a fake cluster in one process: a coordinator and three servers
//! sharing one table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

use super::*;
use crate::connection::Connection;
use crate::protocol::{ClientRequest, ClientResponse, CoordRequest, CoordResponse, Op, Refusal};
use crate::routing::{ClusterConfig, Replica, ServerAddr};

type Table = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// Starts the fake cluster; answers its coordinator's address. The first `refusals`
/// requests are answered `WrongOwner`; with `corrupt`, every GET of an existing key answers
/// a value with one byte changed.
async fn fake(refusals: i64, corrupt: bool) -> String {
    let table = Table::default();
    let refusals = Arc::new(AtomicI64::new(refusals));
    let mut servers = Vec::new();
    for id in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        servers.push(ServerAddr {
            id,
            host: "127.0.0.1".into(),
            client_port: listener.local_addr().unwrap().port(),
            servers_port: 0,
            incarnation: 0,
            state: Replica::Up,
        });
        let (table, refusals) = (table.clone(), refusals.clone());
        accept(listener, move |conn| serve(conn, table.clone(), refusals.clone(), corrupt));
    }
    let config = ClusterConfig::new(1, servers);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator = listener.local_addr().unwrap().to_string();
    accept(listener, move |mut conn| {
        let config = config.clone();
        async move {
            while let Ok(Some(CoordRequest::GetConfig)) = conn.recv().await {
                conn.send(&CoordResponse::Config(Some(config.clone()))).await.unwrap();
            }
        }
    });
    coordinator
}

/// Runs `handle` on every connection `listener` accepts, after the hello.
fn accept<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let mut conn = Connection::new(stream).unwrap();
            let handle = handle.clone();
            tokio::spawn(async move {
                conn.accept_hello(|_| true, &[]).await.unwrap();
                handle(conn).await;
            });
        }
    });
}

/// One fake server connection: every server serves every key from the one table.
async fn serve(mut conn: Connection, table: Table, refusals: Arc<AtomicI64>, corrupt: bool) {
    while let Ok(Some(request)) = conn.recv::<ClientRequest>().await {
        let answer = if refusals.fetch_sub(1, Ordering::SeqCst) > 0 {
            ClientResponse::Refused(Refusal::WrongOwner { epoch: 1 })
        } else {
            let mut table = table.lock().unwrap();
            match request.op {
                Op::Put { key, value } => {
                    table.insert(key, value);
                    ClientResponse::Stored
                }
                Op::Get { key } => {
                    let mut value = table.get(&key).cloned();
                    if let Some(v) = value.as_mut().filter(|_| corrupt) {
                        v[0] = b'A';
                    }
                    ClientResponse::Value(value)
                }
                Op::Del { .. } => unreachable!(),
            }
        };
        conn.send(&answer).await.unwrap();
    }
}

fn options(coordinator: String) -> BenchOptions {
    BenchOptions {
        coordinator,
        requests: 500,
        duration: None,
        connections: 3,
        value_size: 8,
        pipeline: 4,
        ops: vec![BenchOp::Get, BenchOp::Put],
        keyspace: 100,
        timeout: Duration::from_secs(5),
        progress: false,
    }
}

async fn run_all(options: BenchOptions) -> Vec<Report> {
    let mut bench = Bench::connect(options).await.unwrap();
    let mut reports = Vec::new();
    for kind in bench.phases() {
        reports.push(bench.run_phase(kind).await);
    }
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_retried_and_every_answer_checks() {
    let mut options = options(fake(7, false).await);
    // 500 random puts on 1000 keys leave some unstored: their GETs find nothing.
    options.keyspace = 1000;
    let reports = run_all(options).await;
    let kinds: Vec<PhaseKind> = reports.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [PhaseKind::Measure(BenchOp::Put), PhaseKind::Measure(BenchOp::Get)]);
    for report in &reports {
        assert_eq!((report.ok, report.errors), (500, 0), "{:?}", report.error_samples);
        assert_eq!(report.latency.len(), 500);
    }
    assert_eq!(reports[0].retries, 7);
    assert!(reports[1].absent > 0 && reports[1].absent < 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_value_is_an_error() {
    let reports = run_all(options(fake(0, true).await)).await;
    assert_eq!(reports[0].errors, 0);
    let get = &reports[1];
    assert!(get.errors > 0 && get.errors + get.ok == 500);
    assert!(get.error_samples[0].contains("wrong value"), "{:?}", get.error_samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_alone_fills_the_keyspace_first() {
    let mut options = options(fake(0, false).await);
    options.ops = vec![BenchOp::Get];
    let reports = run_all(options).await;
    assert_eq!(reports[0].kind, PhaseKind::Fill);
    assert_eq!(reports[0].ok, 100);
    assert_eq!((reports[1].ok, reports[1].absent, reports[1].errors), (500, 0, 0));
}

#[tokio::test]
async fn bad_options_are_refused() {
    let mut bad = options("127.0.0.1:1".into());
    bad.pipeline = 0;
    assert!(Bench::connect(bad).await.err().unwrap().contains("-P"));
}
