//! The large data set that W3 and W7 read: the same events appended to tidings and to SQLite.

use std::sync::Arc;

use tempfile::TempDir;

use crate::data::Payloads;
use crate::engines::{drive, Engine, Sink};
use crate::report::{Better, Row, Target};
use crate::w12::runtime;
use crate::Settings;

/// A tidings store and an SQLite store holding the same events.
pub struct Dataset {
    /// tidings' store directory (closed).
    pub tidings: TempDir,
    /// SQLite's directory (closed).
    pub sqlite: TempDir,
    /// Events in each.
    pub events: u64,
}

impl Dataset {
    /// Appends `s.big_events()` events to a fresh store of each engine from 256 writers, and
    /// reports the load as a W1 row at that size.
    pub fn build(s: &Settings, rows: &mut Vec<Row>) -> Result<Dataset, String> {
        let payloads = Arc::new(Payloads::new());
        let rt = runtime()?;
        let target = s.big_events();
        let load = |engine: Engine| -> Result<(TempDir, u64, f64), String> {
            let dir = s.tempdir()?;
            let sink = Sink::open(engine, dir.path())?;
            let run = rt.block_on(drive(&sink, payloads.clone(), 256, target, false))?;
            sink.close();
            s.log(format_args!(
                "data set: {} {} events at {:.0} events/s",
                engine.name(),
                run.events,
                run.events_per_sec()
            ));
            Ok((dir, run.events, run.events_per_sec()))
        };
        let (tidings, events, t_rate) = load(Engine::Tidings)?;
        let (sqlite, sqlite_events, s_rate) = load(Engine::Sqlite)?;
        if events != sqlite_events {
            return Err(format!(
                "data set: tidings has {events} events, SQLite {sqlite_events}"
            ));
        }
        rows.push(Row::vs(
            "W1",
            format!("256 writers, {events} events (W3/W7 data set)"),
            "events/s",
            Better::Higher,
            t_rate,
            Engine::Sqlite.name(),
            s_rate,
            Target::RatioAtLeast(2.0),
        ));
        Ok(Dataset {
            tidings,
            sqlite,
            events,
        })
    }
}
