//! The servers as the coordinator sees them: their processes, local or over ssh
//! (`launcher`, `process`), the ports and control links (`links`), heartbeats and fencing
//! (`liveness`), and stopping them in order with their dumps (`shutdown`).

pub mod launcher;
pub mod links;
pub mod liveness;
pub mod process;
pub mod shutdown;
