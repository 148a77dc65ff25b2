//! A planned restart keeps the data: after ctrl+d the next coordinator in the same directory
//! restores the dumps (also with a different number of servers, and with one server's files
//! gone), refuses a set it cannot restore or that does not match its manifest without
//! changing anything, and `--fresh` sets the old set aside.

mod support;

use ftkv::manifest::MANIFEST;
use std::collections::{BTreeMap, HashMap};
use support::cluster::{Cluster, files_in};

/// Keys and values with bytes that need escaping in the dumps.
fn data(count: usize) -> HashMap<Vec<u8>, Vec<u8>> {
    (0..count)
        .map(|i| {
            let key = format!("key-{i}\n\"\\").into_bytes();
            let mut value = format!("value {i} \t").into_bytes();
            value.extend([0u8, 0xff, b'\r', (i % 256) as u8]);
            (key, value)
        })
        .collect()
}

async fn put_all(cluster: &Cluster, data: &HashMap<Vec<u8>, Vec<u8>>) {
    let entries: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let tasks = entries.chunks(entries.len().div_ceil(8).max(1)).map(|chunk| {
        let mut client = cluster.client();
        let chunk = chunk.to_vec();
        tokio::spawn(async move {
            for (key, value) in chunk {
                client.put(&key, &value).await.expect("put");
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
}

/// Every key reads back with its value through a client.
async fn assert_readable(cluster: &Cluster, data: &HashMap<Vec<u8>, Vec<u8>>) {
    let mut client = cluster.client();
    for (key, value) in data {
        assert_eq!(client.get(key).await.expect("get").as_ref(), Some(value));
    }
}

fn finals(data: &HashMap<Vec<u8>, Vec<u8>>) -> HashMap<Vec<u8>, Option<Vec<u8>>> {
    data.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect()
}

fn set_servers(cluster: &Cluster, n: usize) {
    let config = format!("{n}\n{}", "localhost 0 0 0\n".repeat(n));
    std::fs::write(cluster.path("config.txt"), config).unwrap();
}

/// A cluster of `n` holding `data`, stopped with ctrl+d: the dumps and their manifest.
async fn stopped_with(n: usize, data: &HashMap<Vec<u8>, Vec<u8>>) -> Cluster {
    let mut cluster = Cluster::start(n);
    put_all(&cluster, data).await;
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    assert!(cluster.path(MANIFEST).exists(), "{}", cluster.coord_log());
    cluster
}

fn restart(cluster: &mut Cluster, extra: &[&str]) {
    tokio::task::block_in_place(|| cluster.restart_coord(extra));
}

fn stop(cluster: &mut Cluster) {
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
}

/// A stop that wrote no `dumps.manifest` (killed before it, or a server lost just before):
/// the next start gathers the servers' own manifests, checked against the stopped
/// coordinator's state; a server's whose manifest is missing too is restored from its
/// neighbour's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_without_its_manifest_is_gathered_from_the_servers_own() {
    let data = data(600);
    let mut cluster = stopped_with(3, &data).await;
    std::fs::remove_file(cluster.path(MANIFEST)).unwrap();
    std::fs::remove_file(cluster.path("server_1.manifest")).unwrap();
    restart(&mut cluster, &[]);
    assert_eq!(cluster.restored.as_deref().map(|l| l.contains("600 keys")), Some(true));
    assert_readable(&cluster, &data).await;
    let gathered = cluster.coord_log();
    assert!(gathered.contains("server 1 wrote no dumps of its own"), "{gathered}");
    stop(&mut cluster);
    cluster.assert_dumps_match(&finals(&data));
}

/// Restart after ctrl+d: every key is back, the line says how many, and the next ctrl+d
/// writes every key in exactly two dumps (and a new manifest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_ctrl_d_restores_every_key() {
    let data = data(2000);
    let mut cluster = stopped_with(3, &data).await;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster.path(MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest["n"], 3);
    assert_eq!(manifest["servers"][1]["complete"], true);
    assert_eq!(manifest["servers"][1]["primary"]["name"], "server_1.primary");
    let keys: u64 =
        (0..3).map(|id| manifest["servers"][id]["primary"]["keys"].as_u64().unwrap()).sum();
    assert_eq!(keys, 2000);
    let bytes = std::fs::metadata(cluster.path("server_0.primary")).unwrap().len();
    assert_eq!(manifest["servers"][0]["primary"]["bytes"], bytes);

    restart(&mut cluster, &[]);
    let restored = cluster.restored.clone().expect("restored line");
    assert!(restored.starts_with("restored 2000 keys ("), "{restored}");
    assert!(restored.contains(manifest["time"].as_str().unwrap()), "{restored}");
    assert!(!cluster.path(MANIFEST).exists(), "the manifest is gone once restored");
    assert_readable(&cluster, &data).await;
    stop(&mut cluster);
    cluster.assert_dumps_match(&finals(&data));
    assert!(cluster.path(MANIFEST).exists());
}

/// 3 servers -> 4 -> 3: the keys are placed anew each time, all readable, two copies each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_another_number_of_servers_reshards() {
    let data = data(1500);
    let mut cluster = stopped_with(3, &data).await;
    for n in [4, 3] {
        set_servers(&cluster, n);
        restart(&mut cluster, &[]);
        assert_eq!(cluster.pids.len(), n);
        assert!(cluster.restored.as_ref().unwrap().starts_with("restored 1500 keys"));
        assert_no_files_beyond(&cluster, n as u32);
        assert_readable(&cluster, &data).await;
        stop(&mut cluster);
        cluster.assert_dumps_match(&finals(&data));
    }
    // 4 -> 3 left server_3's files of the 4-server set: they were moved aside, whole.
    let aside: Vec<_> = std::fs::read_dir(cluster.path(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("dumps-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let moved: Vec<String> = files_in(&aside[0]).into_keys().collect();
    assert_eq!(moved, ["server_3.aof", "server_3.primary", "server_3.secondary"]);
}

/// No file of a server id the cluster of `n` has not stays in its directory.
fn assert_no_files_beyond(cluster: &Cluster, n: u32) {
    let beyond: Vec<String> = cluster
        .files()
        .into_keys()
        .filter(|name| ftkv::manifest::server_of(name).is_some_and(|id| id >= n))
        .filter(|name| !name.ends_with(".log"))
        .collect();
    assert!(beyond.is_empty(), "left beside the new set of {n}: {beyond:?}");
}

/// One server's files gone: every key still has a copy (its keys are on the next server's
/// secondary dump), so the set is restored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_without_one_servers_files_is_restored() {
    let data = data(1000);
    let mut cluster = stopped_with(3, &data).await;
    std::fs::remove_file(cluster.path("server_1.primary")).unwrap();
    std::fs::remove_file(cluster.path("server_1.secondary")).unwrap();
    restart(&mut cluster, &[]);
    assert!(cluster.restored.as_ref().unwrap().starts_with("restored 1000 keys"));
    assert_readable(&cluster, &data).await;
    stop(&mut cluster);
    cluster.assert_dumps_match(&finals(&data));
}

/// The cluster directory's files but the lock, which names the last coordinator that
/// tried (it is taken before the dumps are looked at, so that two coordinators never both
/// move or restore a set), and the state file (a file that does not match its MD5 is found
/// by the server that loads it, so after a start).
fn files(cluster: &Cluster) -> BTreeMap<String, Vec<u8>> {
    let mut files = cluster.files();
    files.remove("coord.lock");
    files.remove("coord.state");
    files
}

/// Checks that a start on the cluster's directory is refused with `needles` in its message
/// and changes no file there.
fn assert_refused(cluster: &Cluster, extra: &[&str], needles: &[&str]) {
    let before = files(cluster);
    let out = cluster.refused_start(extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("cluster ready"));
    let after = files(cluster);
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|name| before.get(*name) != after.get(*name))
        .collect();
    assert!(changed.is_empty(), "the directory changed: {changed:?}");
}

/// Two neighbours' files gone: server 1's keys have no copy left (its primary, and its
/// copy on server 2): refused, naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_without_two_neighbours_files_is_refused() {
    let cluster = stopped_with(3, &data(300)).await;
    for name in ["server_1.primary", "server_1.secondary", "server_2.primary", "server_2.secondary"]
    {
        std::fs::remove_file(cluster.path(name)).unwrap();
    }
    let needles = [
        "keys of server 1 have no complete copy",
        "server_1.primary is missing",
        "server_2.secondary is missing",
    ];
    assert_refused(&cluster, &[], &needles);
}

/// A truncated file, a flipped byte, a manifest that does not match: each refused naming
/// the file, nothing changed; the set put back as it was restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_set_is_refused_and_left_as_it_was() {
    let data = data(500);
    let mut cluster = stopped_with(3, &data).await;
    let original: BTreeMap<String, Vec<u8>> = cluster.files();
    let put_back = |cluster: &Cluster| {
        for (name, bytes) in &original {
            std::fs::write(cluster.path(name), bytes).unwrap();
        }
    };
    let primary = original["server_2.primary"].clone();
    std::fs::write(cluster.path("server_2.primary"), &primary[..primary.len() - 7]).unwrap();
    assert_refused(&cluster, &[], &["server_2.primary", "truncated"]);

    put_back(&cluster);
    let mut flipped = original["server_0.secondary"].clone();
    flipped[10] ^= 0x20;
    std::fs::write(cluster.path("server_0.secondary"), flipped).unwrap();
    assert_refused(&cluster, &[], &["server_0.secondary", "MD5"]);

    put_back(&cluster);
    let manifest = String::from_utf8(original[MANIFEST].clone()).unwrap();
    let keys = format!("\"keys\": {}", cluster.dump(1, "primary").len());
    let edited = manifest.replacen(&keys, "\"keys\": 1", 1);
    assert_ne!(edited, manifest);
    std::fs::write(cluster.path(MANIFEST), edited).unwrap();
    assert_refused(&cluster, &[], &["keys, the manifest says 1"]);
    std::fs::write(cluster.path(MANIFEST), "{ not a manifest").unwrap();
    assert_refused(&cluster, &[], &[MANIFEST]);

    put_back(&cluster);
    restart(&mut cluster, &[]);
    assert_readable(&cluster, &data).await;
}

/// The set's files: six dumps, three servers' manifests and the set's manifest, and the
/// three servers' logs (`--fresh` moves them aside too).
fn set_of(cluster: &Cluster) -> BTreeMap<String, Vec<u8>> {
    let set: BTreeMap<String, Vec<u8>> = cluster
        .files()
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with("server_") && !name.ends_with(".log") || name == MANIFEST
        })
        .collect();
    assert_eq!(
        set.len(),
        13,
        "six dumps, three logs, three servers' manifests and the set's: {:?}",
        set.keys()
    );
    set
}

/// Dump files without any manifest (an older version) are refused; `--fresh` starts empty
/// and moves the set aside, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumps_without_a_manifest_are_refused_and_fresh_moves_a_set_aside() {
    let data = data(200);
    let mut cluster = stopped_with(3, &data).await;
    let set = set_of(&cluster);
    let manifests: Vec<&String> = set.keys().filter(|name| name.ends_with("manifest")).collect();
    for name in &manifests {
        std::fs::remove_file(cluster.path(name)).unwrap();
    }
    assert_refused(&cluster, &[], &["no dumps manifest", "--fresh"]);
    for name in manifests {
        std::fs::write(cluster.path(name), &set[name]).unwrap();
    }

    restart(&mut cluster, &["--fresh"]);
    assert!(cluster.restored.is_none());
    let key = data.keys().next().unwrap();
    assert_eq!(cluster.client().get(key).await.unwrap(), None, "started empty");
    let asides: Vec<_> = std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("dumps-"))
        .map(|e| e.path())
        .collect();
    assert_eq!(asides.len(), 1, "{asides:?}");
    assert_eq!(files_in(&asides[0]), set, "the old set, intact");
    stop(&mut cluster);
    cluster.assert_dumps_match(&HashMap::new());
}
