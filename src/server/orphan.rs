//! A server whose coordinator is gone (crashed, restarting, cut off) keeps its tables and
//! tries the coordinator's address again for the orphan timeout, so that a restarted
//! coordinator can take the running servers back instead of restoring them from dumps
//! (DESIGN.md, "Coordinator state and failover"). Leases still fence it meanwhile: with no
//! heartbeat answered, it stops serving clients when its lease ends.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::error::{Error, Result};

/// `--orphan-timeout` when not given: long enough for a supervisor (or an operator) to
/// restart a crashed coordinator, short enough that a cluster whose coordinator is gone for
/// good has its dumps written within a minute. Text, as the flags of `server` and `coord`
/// take it.
pub const DEFAULT_ORPHAN_TIMEOUT: &str = "60";
/// Smallest `--orphan-timeout`, in seconds: less would give up before one attempt.
const MIN_SECS: f64 = 0.05;
/// Largest `--orphan-timeout`, in seconds (a day, like the client's `--timeout`).
const MAX_SECS: f64 = 86_400.0;
/// From the start of one attempt to the start of the next: a restarted coordinator is found
/// within this of binding its port, and a dead one costs a refused connection 20 times a
/// second. (200 ms gave a median of 180 ms from a new coordinator's start to the first
/// client operation served; see benches/coord_restart.rs.)
pub const RETRY_EVERY: Duration = Duration::from_millis(50);
/// Longest one attempt (connect, hello, `Started`, answer) may take: a coordinator host that
/// drops packets must not hold up the next try.
pub const ATTEMPT_LIMIT: Duration = Duration::from_secs(1);

/// Why an `--orphan-timeout` value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadOrphanTimeout {
    #[error("{0:?} is not a number of seconds")]
    NotANumber(String),
    #[error("{0} seconds is outside {MIN_SECS}..={MAX_SECS}")]
    OutOfRange(f64),
}

/// Parses `--orphan-timeout SECS` (a decimal number of seconds, fractions allowed), for
/// `server` and for `coord` (which passes it on to every server it starts, so a bad value
/// is refused once, up front).
pub fn parse_orphan_timeout(text: &str) -> Result<Duration, BadOrphanTimeout> {
    let secs: f64 =
        text.trim().parse().map_err(|_| BadOrphanTimeout::NotANumber(text.to_string()))?;
    // NaN is contained in no range: refused here too.
    if !(MIN_SECS..=MAX_SECS).contains(&secs) {
        return Err(BadOrphanTimeout::OutOfRange(secs));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The deadline of an attempt that starts at `now`, or `None` once `give_up` has come: no
/// attempt runs past it, for "no coordinator welcomed it within the orphan timeout" must
/// not become "... plus however long a last connect took".
fn attempt_deadline(now: Instant, give_up: Instant) -> Option<Instant> {
    (now < give_up).then(|| (now + ATTEMPT_LIMIT).min(give_up))
}

/// Runs `attempt` every [`RETRY_EVERY`], each bounded by [`ATTEMPT_LIMIT`], until one is
/// welcomed (its value is returned) or `give_up` passes ([`Error::Unavailable`] with the
/// last failure). [`Error::Replaced`] ends the wait at once: a newer start of this server
/// holds the data, and trying again would not change that.
pub async fn reattach<T, F, Fut>(give_up: Instant, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 0u64;
    let mut last = String::from("no attempt made");
    loop {
        let began = Instant::now();
        let Some(deadline) = attempt_deadline(began, give_up) else {
            return Err(Error::Unavailable(format!(
                "no coordinator took this server back within the orphan timeout \
                 ({tries} attempts; last: {last})"
            )));
        };
        tries += 1;
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(welcomed)) => return Ok(welcomed),
            Ok(Err(Error::Replaced)) => return Err(Error::Replaced),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer in time".into(),
        }
        debug!(tries, %last, "coordinator not back yet");
        tokio::time::sleep_until((began + RETRY_EVERY).min(give_up)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn orphan_timeout_is_seconds_within_bounds() {
        let ok = |text| parse_orphan_timeout(text).unwrap();
        assert_eq!(ok(DEFAULT_ORPHAN_TIMEOUT), Duration::from_secs(60));
        assert_eq!(ok("0.05"), Duration::from_millis(50));
        assert_eq!(ok("2.5"), Duration::from_millis(2500));
        assert_eq!(ok("86400"), Duration::from_secs(86_400));
        for bad in ["0.049", "0", "-1", "86400.5", "1e9", "inf", "NaN"] {
            assert!(
                matches!(parse_orphan_timeout(bad), Err(BadOrphanTimeout::OutOfRange(_))),
                "{bad}"
            );
        }
        for bad in ["", "sixty", "60s", "1,5"] {
            assert_eq!(parse_orphan_timeout(bad), Err(BadOrphanTimeout::NotANumber(bad.into())));
        }
        let message = parse_orphan_timeout("0.01").unwrap_err().to_string();
        assert_eq!(message, "0.01 seconds is outside 0.05..=86400");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_orphan_timeout_after_a_try_every_retry_period() {
        let start = Instant::now();
        let tries = Cell::new(0);
        let outcome: Result<()> = reattach(start + Duration::from_secs(3), || {
            tries.set(tries.get() + 1);
            async { Err(Error::Closed) }
        })
        .await;
        assert_eq!(start.elapsed(), Duration::from_secs(3), "not a moment longer");
        let expected = (Duration::from_secs(3).as_millis() / RETRY_EVERY.as_millis()) as usize;
        assert_eq!(tries.get(), expected, "one try every {RETRY_EVERY:?}");
        let Err(Error::Unavailable(why)) = outcome else { panic!("{outcome:?}") };
        let attempts = format!("{expected} attempts");
        assert!(why.contains(&attempts) && why.contains("peer closed"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_hangs_is_cut_off_and_none_outlasts_the_timeout() {
        let start = Instant::now();
        let tries = Cell::new(0);
        let outcome: Result<()> = reattach(start + Duration::from_millis(2500), || {
            tries.set(tries.get() + 1);
            std::future::pending()
        })
        .await;
        // Cut at 1 s, 2 s, and at the give-up time 2.5 s.
        assert_eq!(start.elapsed(), Duration::from_millis(2500));
        assert_eq!(tries.get(), 3);
        let Err(Error::Unavailable(why)) = outcome else { panic!("{outcome:?}") };
        assert!(why.contains("no answer in time"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_welcome_ends_the_wait_and_replaced_ends_it_at_once() {
        let start = Instant::now();
        let tries = Cell::new(0);
        let welcomed = reattach(start + Duration::from_secs(60), || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move { if n < 4 { Err(Error::Closed) } else { Ok(n) } }
        })
        .await;
        assert_eq!(welcomed.unwrap(), 4);
        assert_eq!(start.elapsed(), 3 * RETRY_EVERY);
        let start = Instant::now();
        let replaced: Result<()> =
            reattach(start + Duration::from_secs(60), || async { Err(Error::Replaced) }).await;
        assert!(matches!(replaced, Err(Error::Replaced)));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
