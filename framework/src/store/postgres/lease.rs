//! Leases on PostgreSQL: one row per name in `leases`, timed by the server's clock.
//!
//! Taking a lease is one upsert that succeeds only when the row is free, expired or already the
//! caller's, and raises the generation. A fenced commit locks the lease row `FOR SHARE` inside
//! the commit's transaction after checking generation and expiry, so a new holder's upsert (which
//! needs the row exclusively) waits for an old holder's commit in flight, and every commit after
//! the takeover finds the new generation and is refused.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::ops::{execute, maybe, rows, unsigned, Params};
use super::Shared;
use crate::store::{Lease, LeaseAttempt, LeaseHolder, LeaseInfo, Result, StoreError};

/// A time as microseconds since the Unix epoch, in SQL.
fn micros(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000000)::bigint")
}

/// The lease statements of one schema.
pub struct LeaseSql {
    acquire: String,
    renew: String,
    release: String,
    load: String,
    list: String,
    fence: String,
}

impl LeaseSql {
    /// The statements for the schema `s` (already quoted).
    pub fn new(s: &str) -> Self {
        let ttl = "clock_timestamp() + $5::bigint * interval '1 microsecond'";
        LeaseSql {
            acquire: format!(
                "INSERT INTO {s}.leases AS l \
                     (name, generation, host, pid, instance, acquired_at, expires_at) \
                 VALUES ($1, 1, $2, $3, $4, clock_timestamp(), {ttl}) \
                 ON CONFLICT (name) DO UPDATE SET generation = l.generation + 1, \
                     host = excluded.host, pid = excluded.pid, instance = excluded.instance, \
                     acquired_at = excluded.acquired_at, expires_at = excluded.expires_at \
                 WHERE l.expires_at <= clock_timestamp() OR l.instance = excluded.instance \
                 RETURNING generation, {}",
                micros("acquired_at")
            ),
            renew: format!(
                "UPDATE {s}.leases SET expires_at = clock_timestamp() + $4::bigint * interval '1 microsecond' \
                 WHERE name = $1 AND generation = $2 AND instance = $3"
            ),
            release: format!(
                "UPDATE {s}.leases SET expires_at = clock_timestamp() \
                 WHERE name = $1 AND generation = $2 AND instance = $3"
            ),
            load: format!(
                "SELECT generation, host, pid, instance, {}, {}, expires_at > clock_timestamp() \
                 FROM {s}.leases WHERE name = $1",
                micros("acquired_at"),
                micros("expires_at")
            ),
            // `starts_with` rather than LIKE: a prefix needs no escaping. The table holds a row
            // per subscription, partition and member: small enough to filter.
            list: format!(
                "SELECT generation, host, pid, instance, {}, {}, expires_at > clock_timestamp(), name \
                 FROM {s}.leases WHERE name >= $1 AND starts_with(name, $1) \
                 ORDER BY name LIMIT $2",
                micros("acquired_at"),
                micros("expires_at")
            ),
            fence: format!(
                "SELECT 1 FROM {s}.leases WHERE name = $1 AND generation = $2 AND instance = $3 \
                 AND expires_at > clock_timestamp() FOR SHARE"
            ),
        }
    }
}

/// A lease time-to-live as whole microseconds (at least one).
fn ttl_micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX).max(1)
}

fn info_from_row(name: &str, row: &Row) -> Result<LeaseInfo> {
    let what = format!("lease {name:?}");
    let pid: i32 = row.get(2);
    Ok(LeaseInfo {
        name: name.to_owned(),
        generation: unsigned(row.get(0), &what)?,
        holder: LeaseHolder::new(
            row.get::<_, String>(1),
            u32::try_from(pid).unwrap_or(0),
            row.get(3),
        ),
        acquired_micros: unsigned(row.get(4), &what)?,
        expires_micros: unsigned(row.get(5), &what)?,
        held: row.get(6),
    })
}

/// See [`EventStore::acquire_lease`](crate::store::EventStore::acquire_lease).
pub async fn acquire(
    shared: &Shared,
    name: &str,
    holder: &LeaseHolder,
    ttl: Duration,
) -> Result<LeaseAttempt> {
    let client = shared.client().await?;
    let pid = i32::try_from(holder.pid).unwrap_or(i32::MAX);
    let params: Params = &[
        &name,
        &holder.host,
        &pid,
        &holder.instance,
        &ttl_micros(ttl),
    ];
    if let Some(row) = maybe(&client, &shared.lease_sql.acquire, params).await? {
        let what = format!("lease {name:?}");
        return Ok(LeaseAttempt::Acquired(Lease {
            name: name.to_owned(),
            generation: unsigned(row.get(0), &what)?,
            holder: holder.clone(),
            acquired_micros: unsigned(row.get(1), &what)?,
        }));
    }
    match load_on(&client, shared, name).await? {
        Some(info) => Ok(LeaseAttempt::HeldBy(info)),
        // Deleted by hand between the two statements: as good as free; try again.
        None => Box::pin(acquire(shared, name, holder, ttl)).await,
    }
}

/// See [`EventStore::renew_lease`](crate::store::EventStore::renew_lease).
pub async fn renew(shared: &Shared, lease: &Lease, ttl: Duration) -> Result<bool> {
    let client = shared.client().await?;
    let generation = i64::try_from(lease.generation).unwrap_or(i64::MAX);
    let params: Params = &[
        &lease.name,
        &generation,
        &lease.holder.instance,
        &ttl_micros(ttl),
    ];
    Ok(execute(&client, &shared.lease_sql.renew, params).await? == 1)
}

/// See [`EventStore::release_lease`](crate::store::EventStore::release_lease).
pub async fn release(shared: &Shared, lease: &Lease) -> Result<()> {
    let client = shared.client().await?;
    let generation = i64::try_from(lease.generation).unwrap_or(i64::MAX);
    let params: Params = &[&lease.name, &generation, &lease.holder.instance];
    execute(&client, &shared.lease_sql.release, params).await?;
    Ok(())
}

/// See [`EventStore::load_lease`](crate::store::EventStore::load_lease).
pub async fn load(shared: &Shared, name: &str) -> Result<Option<LeaseInfo>> {
    let client = shared.client().await?;
    load_on(&client, shared, name).await
}

async fn load_on(
    client: &impl GenericClient,
    shared: &Shared,
    name: &str,
) -> Result<Option<LeaseInfo>> {
    maybe(client, &shared.lease_sql.load, &[&name])
        .await?
        .map(|row| info_from_row(name, &row))
        .transpose()
}

/// See [`EventStore::list_leases`](crate::store::EventStore::list_leases).
pub async fn list(shared: &Shared, prefix: &str, limit: i64) -> Result<Vec<LeaseInfo>> {
    let client = shared.client().await?;
    let rows = rows(&client, &shared.lease_sql.list, &[&prefix, &limit]).await?;
    rows.iter()
        .map(|row| info_from_row(row.get::<_, &str>(7), row))
        .collect()
}

/// Inside a commit's transaction: fails with [`StoreError::Fenced`] unless `lease` is still held
/// (same generation and holder, not expired), and keeps its row locked until the commit ends.
pub async fn fence(client: &impl GenericClient, shared: &Shared, lease: &Lease) -> Result<()> {
    let generation = i64::try_from(lease.generation).unwrap_or(i64::MAX);
    let params: Params = &[&lease.name, &generation, &lease.holder.instance];
    match maybe(client, &shared.lease_sql.fence, params).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced {
            name: lease.name.clone(),
            generation: lease.generation,
        }),
    }
}
