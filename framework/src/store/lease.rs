//! Leases: one holder at a time for a named piece of work (a subscription), across processes.
//!
//! A lease has a **generation** that goes up with each new holder: the fencing token. A holder
//! commits its checkpoint through
//! [`commit_checkpoint_fenced`](super::EventStore::commit_checkpoint_fenced), which the store
//! refuses with [`StoreError::Fenced`](super::StoreError::Fenced) unless the lease is still that
//! generation and not expired, so a holder that lost its lease without noticing (paused,
//! partitioned from the database) cannot move a checkpoint or commit state.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

/// Who holds (or asks for) a lease: a process, and one holder inside it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct LeaseHolder {
    /// The host the process runs on.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// Unique per holder (a process may hold several leases, each with its own id).
    pub instance: Uuid,
}

impl LeaseHolder {
    /// This process, as a new holder: the host name (from `HOSTNAME`, `/etc/hostname` or
    /// `"unknown"`), the pid, a fresh instance id.
    pub fn this_process() -> Self {
        LeaseHolder {
            host: host_name(),
            pid: std::process::id(),
            instance: Uuid::now_v7(),
        }
    }

    /// A holder with the given parts.
    pub fn new(host: impl Into<String>, pid: u32, instance: Uuid) -> Self {
        LeaseHolder {
            host: host.into(),
            pid,
            instance,
        }
    }
}

impl std::fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pid {}", self.host, self.pid)
    }
}

/// The name of this machine, as well as it can be found without a system call crate.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A lease that is held: what the holder shows when it commits.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The leased name.
    pub name: String,
    /// The fencing token: goes up with each new holder.
    pub generation: u64,
    /// Who holds it.
    pub holder: LeaseHolder,
    /// When this holder took it, in microseconds since the Unix epoch (the store's clock).
    pub acquired_micros: u64,
}

impl Lease {
    /// The lease as the store lists it right after it was taken for `ttl`: held, expiring
    /// `ttl` after it was acquired.
    pub(crate) fn held_info(&self, ttl: std::time::Duration) -> LeaseInfo {
        LeaseInfo {
            name: self.name.clone(),
            generation: self.generation,
            holder: self.holder.clone(),
            acquired_micros: self.acquired_micros,
            expires_micros: self
                .acquired_micros
                .saturating_add(u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX)),
            held: true,
        }
    }
}

/// What an attempt to take a lease found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseAttempt {
    /// Taken (or taken again by the same holder, with a new generation).
    Acquired(Lease),
    /// Another holder has it and its lease has not expired.
    HeldBy(LeaseInfo),
}

/// A lease as stored: who holds it and until when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The leased name.
    pub name: String,
    /// Its generation (the fencing token of its holder).
    pub generation: u64,
    /// Who holds it (or held it last).
    pub holder: LeaseHolder,
    /// When the holder took it, in microseconds since the Unix epoch.
    pub acquired_micros: u64,
    /// When it expires unless renewed, in microseconds since the Unix epoch (in the past: free).
    pub expires_micros: u64,
    /// Whether it was held (not expired) when it was read, by the store's clock: decide with
    /// this, not by comparing `expires_micros` with this machine's clock, which may differ.
    #[serde(default)]
    pub held: bool,
}

impl LeaseInfo {
    /// When the holder took it.
    pub fn acquired(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.acquired_micros)
    }
}
