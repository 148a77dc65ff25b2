//! The coordinator's use of etcd (`coord --etcd`): one lease per coordinator process, kept
//! alive for its lifetime; an election among the cluster's coordinators (etcd's election
//! API, on that lease); the coordinator state under the cluster's prefix, written only in
//! a transaction guarded by the leader's election key; and each coordinator's addresses,
//! registered on its lease, so that the leader can name its standbys.
//!
//! Keys, under `/ftkv/<cluster>/`: `leader` (the election), `state` (the [`CoordState`]
//! as the state file holds it), `coordinators/<lease>` (a [`Candidate`] each).
//!
//! Every call has a deadline: etcd's quorum may be gone, and a coordinator must notice
//! rather than hang. Only `campaign` waits without one (that is what it is for; the crate's
//! client-wide timeout would cancel it too, ETCD.md).
//!
//! [`CoordState`]: crate::coord::state::CoordState

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaderKey, PutOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::step_down::step_down;
use crate::coord::ha::authority::Authority;
use crate::error::{Error, Result};

/// Deadline of one call to etcd.
const CALL_LIMIT: Duration = Duration::from_secs(2);

/// A coordinator as the others see it: its ports, and since when it leads (once it does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// `host:port` of its clients port.
    pub clients: String,
    /// `host:port` of its servers port.
    pub servers: String,
    /// UTC time it registered; the leader's status shows the time it won instead.
    pub since: String,
}

/// A connection to etcd with this coordinator's lease.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    pub cluster: String,
    pub lease: i64,
    pub ttl: Duration,
    prefix: String,
}

fn failed(what: &str) -> impl Fn(etcd_client::Error) -> Error + '_ {
    move |e| Error::Unavailable(format!("etcd: {what}: {e}"))
}

/// `call`, or an error once [`CALL_LIMIT`] passed.
async fn bounded<T>(
    what: &str,
    call: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(result) => result.map_err(failed(what)),
        Err(_) => Err(Error::Unavailable(format!("etcd: {what}: no answer within {CALL_LIMIT:?}"))),
    }
}

impl Etcd {
    /// Connects to `urls` and takes a lease of `ttl` (etcd may grant more: its smallest TTL
    /// is 1.5 election timeouts, rounded up to whole seconds).
    pub async fn connect(urls: &[String], cluster: &str, ttl: Duration) -> Result<Etcd> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_LIMIT)
            .with_keep_alive(Duration::from_millis(500), CALL_LIMIT);
        let mut client = bounded("connecting", Client::connect(urls, Some(options))).await?;
        let secs = ttl.as_secs().max(1) as i64;
        let granted = bounded("granting a lease", client.lease_grant(secs, None)).await?;
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        info!(lease = format!("{:x}", granted.id()), ?ttl, cluster, "etcd lease granted");
        Ok(Etcd {
            client,
            cluster: cluster.to_string(),
            lease: granted.id(),
            ttl,
            prefix: format!("/ftkv/{cluster}/"),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Keeps the lease alive for the process's lifetime, pushing `authority` forward with
    /// each answer. Four keep-alives per TTL, each given until the next is due: one that
    /// fails or goes unanswered (sent to a member that is down or cut off) drops its stream,
    /// and the next opens another, which etcd's client may send to another member; so one
    /// lost leaves time for the next. A lease etcd no longer knows (it expired: the process
    /// was paused, or cut off from etcd) ends this coordinator's role at once, leader or
    /// standby.
    pub fn keep_alive(&self, authority: Arc<Authority>) {
        let mut etcd = self.clone();
        let every = self.ttl / 4;
        tokio::spawn(async move {
            let mut stream = None;
            loop {
                let sent = Instant::now();
                let renewed = tokio::time::timeout(every, etcd.renew(&mut stream)).await;
                match renewed {
                    Ok(Ok(Some(ttl))) => authority.renewed(sent, ttl),
                    Ok(Ok(None)) => {
                        step_down("etcd no longer knows this coordinator's lease (it expired)")
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "etcd keep-alive failed; trying again");
                        stream = None;
                    }
                    Err(_) => {
                        warn!("etcd keep-alive unanswered within {every:?}; trying again");
                        stream = None;
                    }
                }
                tokio::time::sleep_until(sent + every).await;
            }
        });
    }

    /// One keep-alive on `stream` (opened first if needed): the TTL granted, or `None` if
    /// the lease is gone.
    async fn renew(
        &mut self,
        stream: &mut Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    ) -> Result<Option<Duration>> {
        let (keeper, answers) = match stream {
            Some(open) => open,
            None => stream.insert(
                bounded("opening a keep-alive", self.client.clone().lease_keep_alive(self.lease))
                    .await?,
            ),
        };
        bounded("keep-alive", keeper.keep_alive()).await?;
        match bounded("keep-alive answer", answers.message()).await? {
            Some(answer) if answer.ttl() > 0 => Ok(Some(Duration::from_secs(answer.ttl() as u64))),
            Some(_) => Ok(None),
            None => Err(Error::Unavailable("etcd: the keep-alive stream ended".into())),
        }
    }

    /// Registers `me` on the lease: gone with it.
    pub async fn register(&self, me: &Candidate) -> Result<()> {
        let key = self.key(&format!("coordinators/{:x}", self.lease));
        let value = serde_json::to_vec(me).expect("a Candidate encodes");
        let options = PutOptions::new().with_lease(self.lease);
        bounded("registering", self.client.clone().put(key, value, Some(options))).await?;
        Ok(())
    }

    /// Waits (without a deadline) until this coordinator leads; returns its election key.
    pub async fn campaign(&self, me: &Candidate) -> Result<LeaderKey> {
        let value = serde_json::to_vec(me).expect("a Candidate encodes");
        let mut won = self
            .client
            .clone()
            .campaign(self.key("leader"), value, self.lease)
            .await
            .map_err(failed("campaigning"))?;
        won.take_leader().ok_or_else(|| Error::Unavailable("etcd: campaign won no key".into()))
    }

    /// Who leads now, if anyone.
    pub async fn leader(&self) -> Result<Option<Candidate>> {
        match tokio::time::timeout(CALL_LIMIT, self.client.clone().leader(self.key("leader"))).await
        {
            Ok(Ok(answer)) => {
                Ok(answer.kv().and_then(|kv| serde_json::from_slice(kv.value()).ok()))
            }
            // etcd answers "election: no leader" as an error.
            Ok(Err(e)) if e.to_string().contains("no leader") => Ok(None),
            Ok(Err(e)) => Err(failed("asking for the leader")(e)),
            Err(_) => Err(Error::Unavailable("etcd: no answer for the leader".into())),
        }
    }

    /// Every registered coordinator, by lease.
    pub async fn coordinators(&self) -> Result<Vec<(i64, Candidate)>> {
        let prefix = self.key("coordinators/");
        let options = GetOptions::new().with_prefix();
        let found =
            bounded("listing coordinators", self.client.clone().get(prefix.clone(), Some(options)))
                .await?;
        Ok(found
            .kvs()
            .iter()
            .filter_map(|kv| {
                let lease =
                    i64::from_str_radix(kv.key_str().ok()?.strip_prefix(&prefix)?, 16).ok()?;
                Some((lease, serde_json::from_slice(kv.value()).ok()?))
            })
            .collect())
    }

    /// The coordinator state a leader wrote last, as bytes.
    pub async fn load(&self) -> Result<Option<Vec<u8>>> {
        let found =
            bounded("reading the state", self.client.clone().get(self.key("state"), None)).await?;
        Ok(found.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Writes the state, only while `leader` still holds the election: a deposed leader's
    /// write fails. `Ok(false)`: deposed.
    pub async fn save(&self, leader: &LeaderKey, bytes: &[u8]) -> Result<bool> {
        let guarded = Txn::new()
            .when([Compare::create_revision(leader.key(), CompareOp::Equal, leader.rev())])
            .and_then([TxnOp::put(self.key("state"), bytes, None)]);
        Ok(bounded("writing the state", self.client.clone().txn(guarded)).await?.succeeded())
    }

    /// Gives the lease back (best effort, quickly): the election key and the registration
    /// go with it, so that a standby need not wait out the TTL.
    pub async fn revoke(&self) {
        let mut client = self.client.clone();
        let revoking = client.lease_revoke(self.lease);
        let _ = tokio::time::timeout(Duration::from_millis(300), revoking).await;
    }
}
