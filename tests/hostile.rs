//! Hostile input on every listening port of the coordinator and of a server: garbage, huge
//! length prefixes, wrong tokens, cut frames, a byte held, a thousand connections, forged
//! control messages. After each: no process died, the cluster still serves within a second,
//! stored keys are intact, and memory did not run away.

mod support;

use std::time::Duration;

use ftkv::client::Client;
use ftkv::connection::encode;
use ftkv::lines;
use ftkv::protocol::{
    ControlRequest, Hello, Op, PROTOCOL_VERSION, ReplMessage, ReportRequest, Role, TableKind,
};
use ftkv::routing::{primary_of, slot_of};
use support::cluster::{Cluster, alive, wait_until};
use support::sockets;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Every port anyone on the network can reach, with a name for messages.
fn ports(cluster: &Cluster) -> Vec<(String, u16)> {
    let status = cluster.status();
    let mut ports = vec![
        ("coord clients".to_string(), cluster.clients_port),
        ("coord servers".to_string(), cluster.servers_port),
    ];
    for server in status["servers"].as_array().unwrap() {
        let id = server["id"].as_u64().unwrap();
        for (name, field) in
            [("clients", "client_port"), ("servers", "servers_port"), ("control", "coord_port")]
        {
            ports.push((format!("server {id} {name}"), server[field].as_u64().unwrap() as u16));
        }
    }
    ports
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Check {
    stored: Vec<(Vec<u8>, Vec<u8>)>,
    pids: Vec<u32>,
    rss: Vec<u64>,
}

impl Check {
    async fn new(cluster: &Cluster) -> Check {
        let mut client = cluster.client();
        let stored: Vec<(Vec<u8>, Vec<u8>)> = (0..60)
            .map(|i| (format!("keep-{i}").into_bytes(), format!("value-{i}").into_bytes()))
            .collect();
        for (k, v) in &stored {
            client.put(k, v).await.unwrap();
        }
        let mut pids = cluster.pids.clone();
        pids.push(cluster.coord.id());
        let rss = pids.iter().map(|&p| rss_kib(p)).collect();
        Check { stored, pids, rss }
    }

    /// Nothing died, a new client is served within a second, stored keys are intact,
    /// memory did not grow by more than 64 MiB per process.
    async fn assert_healthy(&self, cluster: &Cluster, after: &str) {
        for &pid in &self.pids {
            assert!(alive(pid), "process {pid} died after {after}");
        }
        let mut client = Client::new(cluster.coord_addr(), Duration::from_secs(1));
        let began = std::time::Instant::now();
        client
            .put(b"probe", after.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("PUT after {after}: {e}"));
        assert_eq!(client.get(b"probe").await.unwrap().as_deref(), Some(after.as_bytes()));
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "slow after {after}: {:?}",
            began.elapsed()
        );
        for (k, v) in &self.stored {
            assert_eq!(client.get(k).await.unwrap().as_ref(), Some(v), "key changed after {after}");
        }
        for (&pid, &before) in self.pids.iter().zip(&self.rss) {
            let now = rss_kib(pid);
            assert!(
                now < before + 64 * 1024,
                "process {pid} grew from {before} KiB to {now} KiB after {after}"
            );
        }
    }
}

async fn send_and_close(port: u16, bytes: &[u8]) {
    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
        let _ = stream.write_all(bytes).await;
        let _ = stream.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_port_changes_nothing() {
    let cluster = Cluster::start(3);
    let check = Check::new(&cluster).await;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for (name, port) in ports(&cluster) {
        send_and_close(port, &random(4096)).await;
        check.assert_healthy(&cluster, &format!("random bytes on {name}")).await;

        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend(random(64));
        send_and_close(port, &huge).await;
        check.assert_healthy(&cluster, &format!("a huge length prefix on {name}")).await;

        // A frame that promises 100 bytes and stops after 50.
        send_and_close(port, &frame(&random(100))[..54]).await;
        check.assert_healthy(&cluster, &format!("a cut frame on {name}")).await;

        // A well-formed hello of a future protocol version, then a valid-looking frame.
        let hello = Hello { version: PROTOCOL_VERSION + 7, role: Role::Client, token: vec![] };
        send_and_close(port, &frame(&encode(&hello).unwrap())).await;
        check.assert_healthy(&cluster, &format!("a wrong protocol version on {name}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bytes_and_a_thousand_connections_do_not_freeze_anything() {
    let cluster = Cluster::start(3);
    let check = Check::new(&cluster).await;
    for (name, port) in ports(&cluster) {
        // One byte sent and held (a slow-loris peer), kept open during the check.
        let mut held = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        held.write_all(&[0]).await.unwrap();
        check.assert_healthy(&cluster, &format!("one byte held on {name}")).await;
        drop(held);

        // A thousand connections at once, all kept open during the check.
        let mut crowd = Vec::new();
        for _ in 0..1000 {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
                crowd.push(stream);
            }
        }
        check.assert_healthy(&cluster, &format!("1000 connections on {name}")).await;
        drop(crowd);
    }
}

/// A valid-looking frame sequence: hello, then messages, each framed.
fn conversation(hello: &Hello, messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = frame(&encode(hello).unwrap());
    for m in messages {
        out.extend(frame(m));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_control_messages_without_the_token_change_nothing() {
    let mut cluster = Cluster::start(3);
    let check = Check::new(&cluster).await;
    let status: serde_json::Value = cluster.status();
    let server =
        |id: u32, field: &str| status["servers"][id as usize][field].as_u64().unwrap() as u16;
    let (victim_key, victim_value) = check.stored[0].clone();
    let owner = slot_of(&victim_key, 3);

    for token in [vec![], b"not the token".to_vec(), vec![0u8; 64]] {
        for id in 0..3 {
            // SHUTDOWN and a configuration on the control port.
            let bytes = conversation(
                &Hello::new(Role::Coordinator, &token),
                &[
                    encode(&ControlRequest::Shutdown).unwrap(),
                    encode(&ControlRequest::Drain).unwrap(),
                ],
            );
            send_and_close(server(id, "coord_port"), &bytes).await;
        }
        // A replication write into the owner's secondary copy, claiming to be its primary.
        let primary = primary_of(owner, 3);
        let forged = Op::Put { key: victim_key.clone(), value: b"forged".to_vec() };
        let bytes = conversation(
            &Hello::new(Role::Server { id: primary, incarnation: 0 }, &token),
            &[
                encode(&ReplMessage::Open {
                    into: TableKind::Secondary,
                    epoch: 1,
                    target_incarnation: 0,
                    stream: 1,
                })
                .unwrap(),
                encode(&ReplMessage::Batch { first_seq: 1, ops: vec![forged] }).unwrap(),
            ],
        );
        send_and_close(server(owner, "servers_port"), &bytes).await;
        // A heartbeat for another server on the coordinator's servers port.
        let bytes = conversation(
            &Hello::new(Role::Server { id: 1, incarnation: 0 }, &token),
            &[encode(&ReportRequest::Heartbeat(Default::default())).unwrap()],
        );
        send_and_close(cluster.servers_port, &bytes).await;
    }
    // Every forged hello refused and logged: three on each server's control port, three more
    // on the owner's servers port, three on the coordinator's servers port.
    let refusals = |log: &str| {
        let log = std::fs::read_to_string(cluster.path(log)).unwrap_or_default();
        log.lines().filter(|l| l.contains(lines::WRONG_TOKEN)).count()
    };
    let expected = |id: u32| if id == owner { 6 } else { 3 };
    let all_refused = || {
        refusals("coord.log") >= 3
            && (0..3).all(|id| refusals(&format!("server_{id}.log")) >= expected(id))
    };
    assert!(
        tokio::task::block_in_place(|| wait_until(Duration::from_secs(5), all_refused)),
        "refusals logged: coordinator {}, servers {:?}",
        refusals("coord.log"),
        (0..3).map(|id| refusals(&format!("server_{id}.log"))).collect::<Vec<_>>()
    );
    check.assert_healthy(&cluster, "forged control messages").await;
    let log = std::fs::read_to_string(cluster.path(&format!("server_{owner}.log"))).unwrap();
    assert!(
        log.contains(lines::WRONG_TOKEN) && log.contains("127.0.0.1:"),
        "refusals are logged with the peer"
    );

    assert!(cluster.ctrl_d().success());
    // The forged write reached no table: both copies hold the real value.
    assert_eq!(cluster.dump(owner, "primary").get(&victim_key), Some(&victim_value));
    assert_eq!(cluster.dump((owner + 1) % 3, "secondary").get(&victim_key), Some(&victim_value));
}

/// A client that pipelines requests for a large value and never reads the answers cannot
/// make a server buffer them: it stops reading that connection instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_a_server() {
    use ftkv::protocol::ClientRequest;
    let cluster = Cluster::start(3);
    let check = Check::new(&cluster).await;
    let mut client = cluster.client();
    let big = vec![7u8; 1 << 20];
    client.put(b"big", &big).await.unwrap();
    let owner = slot_of(b"big", 3);
    let status: serde_json::Value = cluster.status();
    let port = status["servers"][owner as usize]["client_port"].as_u64().unwrap() as u16;
    let get = encode(&ClientRequest { epoch: 1, op: Op::Get { key: b"big".to_vec() } }).unwrap();
    let mut bytes = frame(&encode(&Hello::new(Role::Client, &[])).unwrap());
    for _ in 0..2000 {
        bytes.extend(frame(&get));
    }
    // 2000 answers of 1 MiB would be 2 GiB; the writer may send only what the socket takes.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let ours = stream.local_addr().unwrap().port();
    let writer = tokio::spawn(async move {
        let _ = stream.write_all(&bytes).await;
        stream
    });
    // The server's answers back up: the socket holds all it takes and the server has to wait.
    let backed_up = || {
        sockets::established(port).iter().any(|q| q.remote_port == ours && q.send > 0)
            && sockets::established(ours).iter().any(|q| q.remote_port == port && q.recv > 0)
    };
    let waiting = tokio::task::block_in_place(|| wait_until(Duration::from_secs(10), backed_up));
    assert!(waiting, "the server's answers never backed up");
    // Showing that something does not happen: a server that went on reading and buffering
    // answers would grow by a good part of the 2 GiB meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    check.assert_healthy(&cluster, "2000 unread answers of 1 MiB").await;
    writer.abort();
}

/// Peers that connect to the token-protected ports and never say anything cannot lock real
/// peers out: with 200 such connections held on the coordinator's servers port and on every
/// server's servers port, a killed server is still replaced (its replacement must report to
/// the coordinator and stream to its secondary over new connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_cannot_lock_out_a_replacement() {
    let cluster = Cluster::start_with(3, &["-t", "1"]);
    let check = Check::new(&cluster).await;
    let status = cluster.status();
    let mut ports = vec![cluster.servers_port];
    for id in 0..3 {
        ports.push(status["servers"][id]["servers_port"].as_u64().unwrap() as u16);
    }
    let mut silent = Vec::new();
    for port in ports {
        for _ in 0..200 {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
                silent.push(stream);
            }
        }
    }
    support::cluster::kill(cluster.pids[1], "KILL");
    // Well within the 5 s hello deadline that would free the places on its own.
    tokio::task::block_in_place(|| cluster.wait_recovered(1, Duration::from_secs(3)));
    let mut check = check;
    check.pids[1] = cluster.pid_of(1);
    check.rss[1] = rss_kib(check.pids[1]);
    check.assert_healthy(&cluster, "a replacement behind 800 silent connections").await;
    drop(silent);
}
