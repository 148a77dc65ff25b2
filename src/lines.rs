//! Lines the programs log or print that someone waits for: tests, and operators grepping a
//! log. One spelling each, shared, so that rewording a message cannot silently break a
//! test that looks for it.

/// coord: a recovery step failed; a+ is killed and a new one started after a backoff.
pub const ROLLING_BACK: &str = "recovery: rolling back to step 1";
/// coord: a recovery ended with both copies of every key again.
pub const RECOVERED: &str = "recovery complete: full redundancy restored";
/// coord: part of the reason for a shutdown forced by a second server lost.
pub const TWO_FAULTS: &str = "two faults";
/// coord: the state file could not be written (the coordinator goes on without it).
pub const STATE_NOT_SAVED: &str = "cannot write the coordinator state";
/// coord: a server that gave up on this coordinator (it was paused) came back to it.
pub const REATTACHED_TO_US: &str = "server re-attached on a new report link";
/// coord: a restarted coordinator took the running servers back.
pub const TOOK_BACK: &str = "took the running cluster back";
/// coord: a stop signal or the end of standard input started an orderly shutdown.
pub const SHUTTING_DOWN: &str = "shutting down";
/// coord: it was paused or starved itself, so silence before now is no evidence.
pub const STALLED: &str = "the coordinator was not running; heartbeat silence counts from now";
/// coord: a second signal gave up on servers that could not write their dumps.
pub const GAVE_UP_ON_DUMPS: &str = "gave up waiting for dumps";
/// coord: starting or killing a remote server over ssh did not work (it may be cut off).
pub const SSH_FAILED: &str = "over ssh failed";
/// coord (standard output and log): the dumps of an earlier run were restored, before
/// "cluster ready".
pub const RESTORED: &str = "restored";
/// coord: the dumps manifest is written (the last step of an orderly shutdown).
pub const MANIFEST_WRITTEN: &str = "dumps manifest written";
/// coord (standard output and log): every server of the cluster it was to take back is
/// gone; it restores their last dumps instead.
pub const SERVERS_GONE: &str = "every server of the cluster is gone";
/// coord: it was killed during a restore; the servers it had started are killed and the
/// restore begins again.
pub const RESTORE_AGAIN: &str = "a restore was under way when the coordinator stopped";
/// coord: a restore begins (the servers run; the set is being written into them).
pub const RESTORING: &str = "restoring";
/// A log's last record, cut short by a crash, cut off at a start.
pub const TORN_TAIL_CUT: &str = "a torn last record cut";
/// A start after a crash of every process (the state names servers, none runs).
pub const FROM_LOGS: &str =
    "no server of the cluster runs (a crash?): starting each again from its log";
/// A start after a crash with another number of servers (or other servers) than the
/// crashed cluster had: its logs are read here and restored as a set of dumps of its N.
pub const RESHARD_LOGS: &str = "no server of the cluster runs (a crash?), and the configuration \
     names other servers: resharding their logs";
/// server: it was asked for dumps while a restore fills it: the files keep the set.
pub const NO_DUMPS_DURING_RESTORE: &str =
    "a restore is under way: no dumps written (the files hold the set being restored)";
/// server: both dump files and its manifest are written.
pub const DUMPS_WRITTEN: &str = "dumps written";
/// server: a dump could not be written; the data stays in memory and it tries again.
pub const CANNOT_WRITE_DUMPS: &str = "cannot write dumps; keeping the data";
/// server: dump files appeared that a newer start of its id wrote (it was replaced while
/// cut off): it keeps them and exits without its own.
pub const NEWER_DUMPS: &str =
    "a newer start of this server wrote its dumps meanwhile; keeping them";
/// server: its coordinator is gone.
pub const LOST_COORDINATOR: &str = "lost the coordinator; writing dumps and exiting";
/// server: its report link to the coordinator is gone; it keeps its data and tries again
/// for the orphan timeout (serving no client once its lease ends).
pub const ORPHANED: &str = "lost the coordinator; keeping the data and reconnecting";
/// server: a coordinator (a restarted one) welcomed it back after the link was lost.
pub const REATTACHED: &str = "re-attached to the coordinator";
/// server (standard error, exit 1): it never got a configuration.
pub const NEVER_JOINED: &str = "never joined the cluster";
/// every port (its log): a hello with the wrong cluster token was refused.
pub const WRONG_TOKEN: &str = "wrong cluster token";
/// coord: a server's replication stream to its copy is cut (writes wait `-t` unacknowledged,
/// both still heard): the owner is replaced as a lost server.
pub const CUT_REPLACING: &str = "replication stream cut; replacing its owner";
/// coord: a cut seen within the backoff after the last cut-triggered replacement.
pub const CUT_HELD: &str = "replication stream cut again within the backoff; not replacing";
/// coord: a stream seen cut acknowledges writes again.
pub const CUT_HEALED: &str = "replication stream flows again";
/// A coordinator elected through etcd waits as a standby (stdout and log).
pub const STANDBY: &str = "standby";
/// It won its election (stdout and log).
pub const LEADING: &str = "leading";
/// It stopped acting as the leader, and why (stdout and log).
pub const STEPPED_DOWN: &str = "stepped down";
/// It won, but the leader before it had shut the cluster down meanwhile.
pub const CLUSTER_WAS_STOPPED: &str = "the cluster was shut down by its leader";
/// Why a leader elected through etcd stopped: its lease may have run out.
pub const AUTHORITY_LAPSED: &str =
    "its etcd lease may have expired (no keep-alive answered in time)";
/// server: the leader's lease answer listed the coordinators anew (a standby joined or left).
pub const COORDINATORS_LISTED: &str = "coordinators listed by the leader";
