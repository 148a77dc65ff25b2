//! Every answer is checked, not only counted: a PUT must be `Stored`; a GET of a key this
//! run stored must return exactly the value stored, and a GET of any other key nothing or a
//! value this benchmark could have written (values are a deterministic function of the
//! key). Refusals that a configuration change explains, and lost answers, are retried.

use crate::protocol::{ClientResponse, Refusal};

use super::keys::is_value_of;
use super::options::BenchOp;
use super::phase::Phase;
use super::worker::Pending;

pub(super) enum Checked {
    Ok { absent: bool },
    Retry(String),
    Error(String),
}

/// Checks one answer (or why none came) against what the benchmark stored.
pub(super) fn check(
    phase: &Phase,
    pending: &Pending,
    answer: Result<ClientResponse, String>,
) -> Checked {
    let key = || String::from_utf8_lossy(&pending.key).into_owned();
    let answer = match answer {
        Ok(answer) => answer,
        Err(why) => return Checked::Retry(why),
    };
    match (phase.op, answer) {
        (
            _,
            ClientResponse::Refused(
                refusal @ (Refusal::WrongOwner { .. } | Refusal::Unavailable(_)),
            ),
        ) => Checked::Retry(refusal.to_string()),
        (BenchOp::Put, ClientResponse::Stored) => Checked::Ok { absent: false },
        (BenchOp::Get, ClientResponse::Value(value)) => {
            let stored = phase.stored.get(pending.index);
            match value {
                None if stored => Checked::Error(format!("get {}: not found after a put", key())),
                None => Checked::Ok { absent: true },
                Some(value) if stored && value.len() != phase.value_size => {
                    Checked::Error(format!(
                        "get {}: {} bytes, expected the {} put",
                        key(),
                        value.len(),
                        phase.value_size
                    ))
                }
                Some(value) if is_value_of(pending.index, &value) => Checked::Ok { absent: false },
                Some(value) => Checked::Error(format!(
                    "get {}: wrong value {:?}",
                    key(),
                    String::from_utf8_lossy(&value[..value.len().min(40)])
                )),
            }
        }
        (op, answer) => {
            Checked::Error(format!("{} {}: unexpected answer {answer:?}", op.name(), key()))
        }
    }
}
