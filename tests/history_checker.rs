//! Unit tests of the history checker (tests/support/history.rs): histories it must accept
//! and histories it must reject.

mod support;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::history::*;

static BASE: OnceLock<Instant> = OnceLock::new();

fn t(us: u64) -> Instant {
    *BASE.get_or_init(Instant::now) + Duration::from_micros(us)
}

fn ev(client: usize, op: Op, outcome: Outcome, a: u64, b: u64) -> Event {
    Event { client, key: b"k".to_vec(), op, invoke: t(a), ret: t(b), outcome }
}

fn put(c: usize, v: &str, a: u64, b: u64) -> Event {
    ev(c, Op::Put(v.into()), Outcome::Ok, a, b)
}

fn put_with(c: usize, v: &str, outcome: Outcome, a: u64, b: u64) -> Event {
    ev(c, Op::Put(v.into()), outcome, a, b)
}

fn get(c: usize, v: Option<&str>, a: u64, b: u64) -> Event {
    ev(c, Op::Get, Outcome::Value(v.map(Vec::from)), a, b)
}

fn del(c: usize, a: u64, b: u64) -> Event {
    ev(c, Op::Del, Outcome::Ok, a, b)
}

fn with_key(mut e: Event, key: &str) -> Event {
    e.key = key.into();
    e
}

#[test]
fn empty_and_sequential_histories_accepted() {
    assert_eq!(check_key(&[]), Ok(()));
    assert_eq!(check_all(&[]), Ok(0));
    let h = [
        get(0, None, 0, 1),
        put(0, "a", 2, 3),
        get(1, Some("a"), 4, 5),
        put(1, "b", 6, 7),
        get(0, Some("b"), 8, 9),
        del(0, 10, 11),
        get(1, None, 12, 13),
    ];
    assert_eq!(check_key(&h), Ok(()));
}

#[test]
fn concurrent_put_and_get_may_see_either_value() {
    for seen in [Some("a"), Some("b")] {
        let h = [put(0, "a", 0, 1), put(0, "b", 10, 20), get(1, seen, 12, 18)];
        assert_eq!(check_key(&h), Ok(()), "get saw {seen:?}");
    }
    // Equal instants count as concurrent.
    let h = [put(0, "a", 0, 10), get(1, None, 10, 12)];
    assert_eq!(check_key(&h), Ok(()));
}

#[test]
fn stale_read_rejected() {
    let h = [put(0, "a", 0, 1), put(0, "b", 2, 3), get(1, Some("a"), 4, 5)];
    let err = check_key(&h).unwrap_err();
    assert!(err.contains("not linearizable"), "{err}");
    assert!(err.contains("GET"), "{err}");
}

#[test]
fn read_of_never_written_value_rejected() {
    let h = [put(0, "a", 0, 1), get(1, Some("zzz"), 2, 3)];
    assert!(check_key(&h).is_err());
    assert!(check_key(&[get(0, Some("x"), 0, 1)]).is_err());
}

#[test]
fn lost_write_rejected() {
    let h = [put(0, "a", 0, 1), get(1, None, 2, 3)];
    assert!(check_key(&h).is_err());
}

#[test]
fn unknown_put_observed_later_accepted() {
    let h = [
        put(0, "a", 0, 1),
        put_with(1, "b", Outcome::Unknown, 2, 3),
        get(0, Some("a"), 4, 5),
        get(0, Some("b"), 100, 101),
        get(2, Some("b"), 102, 103),
    ];
    assert_eq!(check_key(&h), Ok(()));
}

#[test]
fn unknown_put_may_take_effect_after_later_writes() {
    let h =
        [put_with(1, "u", Outcome::Unknown, 0, 1), put(0, "a", 10, 11), get(0, Some("u"), 20, 21)];
    assert_eq!(check_key(&h), Ok(()));
    // ...but not before its invocation.
    let h =
        [put(0, "a", 0, 1), get(0, Some("u"), 2, 3), put_with(1, "u", Outcome::Unknown, 10, 11)];
    assert!(check_key(&h).is_err());
}

#[test]
fn unknown_put_never_observed_accepted() {
    let h = [
        put(0, "a", 0, 1),
        put_with(1, "b", Outcome::Unknown, 2, 3),
        get(0, Some("a"), 4, 5),
        get(2, Some("a"), 100, 101),
    ];
    assert_eq!(check_key(&h), Ok(()));
    // Unknown GETs carry no information.
    let h = [put(0, "a", 0, 1), ev(1, Op::Get, Outcome::Unknown, 2, 3)];
    assert_eq!(check_key(&h), Ok(()));
}

#[test]
fn read_of_failed_put_rejected() {
    let h = [put(0, "a", 0, 1), put_with(1, "b", Outcome::Failed, 2, 3), get(0, Some("b"), 4, 5)];
    assert!(check_key(&h).is_err());
    // Without the bad read the failed put is simply ignored.
    assert_eq!(check_key(&h[..2]), Ok(()));
}

#[test]
fn del_semantics() {
    // Deleting removes the value; deleting an absent key is fine.
    let h = [del(0, 0, 1), put(0, "a", 2, 3), del(1, 4, 5), get(0, None, 6, 7)];
    assert_eq!(check_key(&h), Ok(()));
    // A value reappearing after an acknowledged delete is rejected.
    let h = [put(0, "a", 0, 1), del(1, 2, 3), get(0, Some("a"), 4, 5)];
    assert!(check_key(&h).is_err());
    // A read concurrent with a delete may see either.
    for seen in [Some("a"), None] {
        let h = [put(0, "a", 0, 1), del(1, 2, 10), get(0, seen, 3, 9)];
        assert_eq!(check_key(&h), Ok(()), "get saw {seen:?}");
    }
    // Unknown delete: may or may not have happened.
    for seen in [Some("a"), None] {
        let h = [put(0, "a", 0, 1), ev(1, Op::Del, Outcome::Unknown, 2, 3), get(0, seen, 10, 11)];
        assert_eq!(check_key(&h), Ok(()), "get saw {seen:?}");
    }
    // Failed delete: the value must still be there.
    let h = [put(0, "a", 0, 1), ev(1, Op::Del, Outcome::Failed, 2, 3), get(0, None, 10, 11)];
    assert!(check_key(&h).is_err());
}

#[test]
fn malformed_or_odd_events_do_not_panic() {
    let h = [ev(0, Op::Get, Outcome::Ok, 0, 1)];
    assert!(check_key(&h).unwrap_err().contains("malformed"));
    let h = [ev(0, Op::Del, Outcome::Value(None), 0, 1)];
    assert!(check_key(&h).unwrap_err().contains("malformed"));
    // Return before invoke is treated as an instantaneous operation.
    let h = [put(0, "a", 5, 0), get(1, Some("a"), 6, 7)];
    assert_eq!(check_key(&h), Ok(()));
    // Long binary values are shown abbreviated.
    let long = vec![0xffu8; 1000];
    let h = [ev(0, Op::Get, Outcome::Value(Some(long)), 0, 1)];
    let err = check_key(&h).unwrap_err();
    assert!(err.len() < 600, "{err}");
}

#[test]
fn check_all_splits_by_key_and_names_the_failing_key() {
    let h = [
        with_key(put(0, "a", 0, 1), "x"),
        with_key(put(1, "b", 0, 1), "y"),
        with_key(get(0, Some("a"), 2, 3), "x"),
        // "b" was written to y, not x: x's history alone is fine.
        with_key(get(1, Some("b"), 2, 3), "y"),
    ];
    assert_eq!(check_all(&h), Ok(2));
    let mut bad = h.to_vec();
    bad.push(with_key(get(2, Some("b"), 4, 5), "x"));
    let err = check_all(&bad).unwrap_err();
    assert!(err.starts_with("key \"x\""), "{err}");
}

#[test]
fn lost_acknowledged_writes_helper() {
    let h = [
        with_key(put(0, "a", 0, 1), "x"),
        with_key(put(0, "b", 2, 3), "x"),
        with_key(put(1, "c", 2, 5), "y"),
        with_key(put_with(2, "u", Outcome::Unknown, 0, 1), "y"),
        with_key(put(1, "d", 6, 7), "y"),
        with_key(put_with(2, "f", Outcome::Failed, 8, 9), "y"),
        with_key(del(0, 0, 1), "z"),
    ];
    let finals = |pairs: &[(&str, Option<&str>)]| -> HashMap<Vec<u8>, Option<Vec<u8>>> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.map(Vec::from))).collect()
    };
    let ok = finals(&[
        ("x", Some("b")),
        ("y", Some("u")), // unknown write may land last
        ("z", None),
        ("w", None), // never written: initial value
    ]);
    assert!(lost_acknowledged_writes(&h, &ok).is_empty());
    let also_ok = finals(&[("y", Some("d"))]);
    assert!(lost_acknowledged_writes(&h, &also_ok).is_empty());
    let bad = finals(&[
        ("x", Some("a")), // overwritten by b
        ("y", Some("f")), // failed write
        ("z", Some("q")), // never written
        ("w", Some("a")), // never written to w
        ("v", None),      // fine
    ]);
    let lost = lost_acknowledged_writes(&h, &bad);
    assert_eq!(lost, vec![b"w".to_vec(), b"x".to_vec(), b"y".to_vec(), b"z".to_vec()]);
    let lost_put = finals(&[("x", None)]);
    assert_eq!(lost_acknowledged_writes(&h, &lost_put), vec![b"x".to_vec()]);
}

#[test]
fn recorder_collects_from_many_threads() {
    let rec = Recorder::new();
    std::thread::scope(|s| {
        for c in 0..8 {
            let rec = &rec;
            s.spawn(move || {
                for i in 0..100 {
                    rec.record(with_key(put(c, "v", i, i + 1), &format!("k{c}")));
                }
            });
        }
    });
    let events = rec.events();
    assert_eq!(events.len(), 800);
    assert_eq!(check_all(&events), Ok(8));
}

/// splitmix64
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Simulates a linearizable register: linearization points are chosen
/// first (strictly increasing), then an interval around each point for a
/// free client (each side up to `width` µs; points `gap` µs apart at
/// most). Values are unique. Includes unknown (applied or not) and failed
/// writes and unknown deletes.
fn simulate(seed: u64, n_ops: usize, clients: usize, width: u64, gap: u64) -> Vec<Event> {
    let mut rng = Rng(seed);
    let mut free_at = vec![0u64; clients];
    let mut state: Option<Vec<u8>> = None;
    let mut events = Vec::with_capacity(n_ops);
    let mut point = width;
    let mut serial = 0u64;
    while events.len() < n_ops {
        point += 1 + rng.below(gap);
        let free: Vec<usize> = (0..clients).filter(|&c| free_at[c] <= point).collect();
        if free.is_empty() {
            continue;
        }
        let c = free[rng.below(free.len() as u64) as usize];
        let invoke = point - rng.below((point - free_at[c]).min(width) + 1);
        let ret = point + rng.below(width);
        free_at[c] = ret + 1;
        let roll = rng.below(100);
        let (op, outcome) = if roll < 45 {
            (Op::Get, Outcome::Value(state.clone()))
        } else if roll < 90 {
            serial += 1;
            let v = format!("v{serial}").into_bytes();
            let (outcome, applied) = match rng.below(100) {
                0..=89 => (Outcome::Ok, true),
                90..=93 => (Outcome::Unknown, true),
                94..=96 => (Outcome::Failed, false),
                _ => (Outcome::Unknown, false),
            };
            if applied {
                state = Some(v.clone());
            }
            (Op::Put(v), outcome)
        } else {
            let outcome = if rng.below(10) == 0 { Outcome::Unknown } else { Outcome::Ok };
            if outcome == Outcome::Ok || rng.below(2) == 0 {
                state = None;
            }
            (Op::Del, outcome)
        };
        events.push(Event {
            client: c,
            key: b"k".to_vec(),
            op,
            invoke: t(invoke),
            ret: t(ret),
            outcome,
        });
    }
    events
}

/// Makes one GET in the second half return the value of an acknowledged
/// PUT `p` that was entirely followed by another acknowledged PUT `q`
/// which returned before the GET was invoked. Values are unique, so the
/// read is provably stale.
fn make_stale(events: &mut [Event]) -> bool {
    let ok_put = |e: &Event| matches!(e.op, Op::Put(_)) && e.outcome == Outcome::Ok;
    for g in events.len() / 2..events.len() {
        if events[g].op != Op::Get || !matches!(events[g].outcome, Outcome::Value(_)) {
            continue;
        }
        let g_invoke = events[g].invoke;
        let Some(q) =
            events.iter().filter(|e| ok_put(e) && e.ret < g_invoke).max_by_key(|e| e.invoke)
        else {
            continue;
        };
        let q_invoke = q.invoke;
        let Some(p) = events.iter().filter(|e| ok_put(e) && e.ret < q_invoke).max_by_key(|e| e.ret)
        else {
            continue;
        };
        let Op::Put(stale) = p.op.clone() else {
            continue;
        };
        events[g].outcome = Outcome::Value(Some(stale));
        return true;
    }
    false
}

#[test]
fn randomized_linearizable_history_accepted_and_mutation_rejected() {
    for seed in 1..=5 {
        let mut h = simulate(seed, 2000, 6, 60, 20);
        let start = Instant::now();
        assert_eq!(check_key(&h), Ok(()), "seed {seed}");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "seed {seed}: took {took:?}");

        assert!(make_stale(&mut h), "seed {seed}: no stale candidate");
        let start = Instant::now();
        let err = check_key(&h).unwrap_err();
        let took = start.elapsed();
        assert!(err.contains("not linearizable"), "seed {seed}: {err}");
        assert!(took < Duration::from_secs(2), "seed {seed}: took {took:?}");
    }
}

#[test]
fn randomized_heavily_overlapping_eight_clients() {
    for seed in 10..=12 {
        let mut h = simulate(seed, 3000, 8, 200, 5);
        let start = Instant::now();
        assert_eq!(check_key(&h), Ok(()), "seed {seed}");
        assert!(make_stale(&mut h), "seed {seed}: no stale candidate");
        let err = check_key(&h).unwrap_err();
        assert!(err.contains("not linearizable"), "seed {seed}: {err}");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(10), "seed {seed}: took {took:?}");
    }
}

#[test]
fn randomized_multi_key_history_accepted() {
    let mut all = Vec::new();
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        all.extend(simulate(100 + i as u64, 700, 8, 80, 20).into_iter().map(|e| with_key(e, key)));
    }
    assert_eq!(check_all(&all), Ok(3));
}

/// Plain exhaustive Wing & Gong search without memoization or pruning.
fn brute_force(events: &[Event]) -> bool {
    struct B {
        op: Op,
        read: Option<Option<Vec<u8>>>,
        invoke: Instant,
        ret: Option<Instant>,
    }
    let ops: Vec<B> = events
        .iter()
        .filter_map(|e| match (&e.op, &e.outcome) {
            (_, Outcome::Failed) | (Op::Get, Outcome::Unknown) => None,
            (Op::Get, Outcome::Value(v)) => Some(B {
                op: Op::Get,
                read: Some(v.clone()),
                invoke: e.invoke,
                ret: Some(e.ret.max(e.invoke)),
            }),
            (op, outcome) => Some(B {
                op: op.clone(),
                read: None,
                invoke: e.invoke,
                ret: (*outcome == Outcome::Ok).then_some(e.ret.max(e.invoke)),
            }),
        })
        .collect();
    fn go(ops: &[B], done: &mut Vec<bool>, state: &Option<Vec<u8>>) -> bool {
        let pending_finite = (0..ops.len()).any(|i| !done[i] && ops[i].ret.is_some());
        if !pending_finite {
            return true;
        }
        let min_ret = (0..ops.len()).filter(|&i| !done[i]).filter_map(|i| ops[i].ret).min();
        for i in 0..ops.len() {
            if done[i] || min_ret.is_some_and(|m| ops[i].invoke > m) {
                continue;
            }
            let next = match (&ops[i].op, &ops[i].read) {
                (Op::Get, Some(v)) if v == state => state.clone(),
                (Op::Get, _) => continue,
                (Op::Put(v), _) => Some(v.clone()),
                (Op::Del, _) => None,
            };
            done[i] = true;
            let ok = go(ops, done, &next);
            done[i] = false;
            if ok {
                return true;
            }
        }
        false
    }
    let mut done = vec![false; ops.len()];
    go(&ops, &mut done, &None)
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    let mut rng = Rng(42);
    let values = ["a", "b", "c"];
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..4000 {
        let n = 1 + rng.below(8) as usize;
        // Per round: how often writes end up unknown (in sixths).
        let unknown_sixths = [0, 1, 3][rng.below(3) as usize];
        let h: Vec<Event> = (0..n)
            .map(|i| {
                let a = rng.below(20);
                let b = a + rng.below(10);
                let v = values[rng.below(3) as usize];
                match rng.below(10) {
                    0..=3 => {
                        let seen = if rng.below(4) == 0 { None } else { Some(v) };
                        let mut e = get(i, seen, a, b);
                        if rng.below(15) == 0 {
                            e.outcome = Outcome::Unknown;
                        }
                        e
                    }
                    4..=7 => {
                        let roll = rng.below(6);
                        let outcome = if roll < unknown_sixths {
                            Outcome::Unknown
                        } else if roll == 5 {
                            Outcome::Failed
                        } else {
                            Outcome::Ok
                        };
                        put_with(i, v, outcome, a, b)
                    }
                    _ => {
                        let outcome = if rng.below(6) < unknown_sixths {
                            Outcome::Unknown
                        } else {
                            Outcome::Ok
                        };
                        ev(i, Op::Del, outcome, a, b)
                    }
                }
            })
            .collect();
        let expected = brute_force(&h);
        assert_eq!(check_key(&h).is_ok(), expected, "round {round}: {h:#?}");
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert!(accepted > 300 && rejected > 300, "{accepted} / {rejected}");
}
