//! What operators see: the event hub (`events`), a recovery's steps with their durations
//! (`progress`), `client watch`'s stream (`watchers`), and the Prometheus metrics with their
//! HTTP port (`metrics`, `scrape`). Read-only views of the cluster: nothing here acts on it.

pub mod events;
pub mod metrics;
pub mod progress;
pub mod scrape;
pub mod watchers;
