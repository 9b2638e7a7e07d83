//! The simulation controls' values (`SimulationService`, served only with
//! `--simulation-controls`): how far to move the clock, and how the simulated data plane treats
//! one disk's copies. The arithmetic of a steered copy lives here, pure, so the backend that
//! reports a copy's progress and the call that changes its rate compute it alike.

use chrono::TimeDelta;

use super::{ParseError, Snapshot, Timestamp};

/// The longest AdvanceClock step: ten years (the clock still has to stay storable, see
/// [`super::is_storable_time`]).
pub const MAX_CLOCK_ADVANCE_SECONDS: i64 = 10 * 366 * 24 * 3600;

/// The fastest copy rate a disk may be given: 1 TiB/s.
pub const MAX_COPY_RATE_MIBPS: i64 = 1024 * 1024;

/// How long a stalled copy (rate 0) says it has left: the worker looks at it again after this,
/// and SetCopyRate re-dues the copy whenever its rate changes.
pub const STALLED_REMAINING: std::time::Duration = std::time::Duration::from_secs(3600);

/// How far AdvanceClock moves the service's clock: 1 s to ten years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockAdvance(TimeDelta);

impl ClockAdvance {
    pub fn parse(seconds: i64) -> Result<Self, ParseError> {
        if (1..=MAX_CLOCK_ADVANCE_SECONDS).contains(&seconds) {
            Ok(Self(TimeDelta::seconds(seconds)))
        } else {
            Err(ParseError::InvalidParameter {
                field: "seconds",
                why: format!(
                    "the clock only moves forward, by 1 to {MAX_CLOCK_ADVANCE_SECONDS} seconds \
                     (got {seconds})"
                ),
            })
        }
    }

    /// In microseconds, the unit the shared offset is kept in.
    pub fn as_micros(self) -> i64 {
        self.0.num_microseconds().unwrap_or(i64::MAX)
    }
}

/// A disk's copy rate in MiB/s: 0 (stalled until changed) up to [`MAX_COPY_RATE_MIBPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyRateMibps(i64);

impl CopyRateMibps {
    pub fn parse(mibps: i64) -> Result<Self, ParseError> {
        if (0..=MAX_COPY_RATE_MIBPS).contains(&mibps) {
            Ok(Self(mibps))
        } else {
            Err(ParseError::InvalidParameter {
                field: "mibps",
                why: format!(
                    "a copy rate is 0 (stalled) to {MAX_COPY_RATE_MIBPS} MiB/s (got {mibps})"
                ),
            })
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// How the simulated data plane treats one disk's copies, as SimulationService left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSteering {
    pub disk_id: String,
    /// The rate set by SetCopyRate, and since when; `None`: the server's `--copy-rate-mibps`.
    pub rate: Option<SteeredRate>,
    /// The copy that was running when the rate last changed, and how far it had got then.
    pub checkpoint: Option<Checkpoint>,
    /// FailNextCopy is armed: the disk's first snapshot started at or after this instant
    /// fails. Cleared when that snapshot is picked.
    pub fail_from: Option<Timestamp>,
    /// The snapshot FailNextCopy picked last (it stays doomed when the call is armed again).
    pub doomed_snapshot_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteeredRate {
    pub mibps: i64,
    pub since: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub snapshot_id: String,
    pub copied_kib: i64,
}

/// Where a steered copy stands at an instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SteeredCopy {
    pub copied_kib: f64,
    pub total_kib: f64,
    /// KiB/s now (0: stalled).
    pub rate_kibps: f64,
    /// FailNextCopy picked this copy: it fails halfway.
    pub doomed: bool,
}

impl SteeredCopy {
    /// Where the copy ends: all of it, or half of it when it is doomed.
    pub fn end_kib(&self) -> f64 {
        if self.doomed {
            self.total_kib / 2.0
        } else {
            self.total_kib
        }
    }

    pub fn has_ended(&self) -> bool {
        self.copied_kib >= self.end_kib()
    }

    /// How long until it ends at today's rate ([`STALLED_REMAINING`] while stalled).
    pub fn remaining(&self) -> std::time::Duration {
        let left = (self.end_kib() - self.copied_kib).max(0.0);
        if self.rate_kibps <= 0.0 {
            return STALLED_REMAINING;
        }
        std::time::Duration::try_from_secs_f64(left / self.rate_kibps).unwrap_or(STALLED_REMAINING)
    }

    /// When the worker should look at the copy again, standing as it does at `now`.
    pub fn due_at(&self, now: Timestamp) -> Timestamp {
        if self.has_ended() {
            now
        } else {
            super::later(now, self.remaining())
        }
    }

    /// 0..=99, truncated, of the whole disk.
    pub fn progress_percent(&self) -> u8 {
        if self.total_kib <= 0.0 {
            return 99;
        }
        ((self.copied_kib / self.total_kib * 100.0) as u8).min(99)
    }
}

impl DiskSteering {
    /// A disk SimulationService has not touched: the default rate, nothing doomed.
    pub fn untouched(disk_id: &str) -> Self {
        Self {
            disk_id: disk_id.to_owned(),
            rate: None,
            checkpoint: None,
            fail_from: None,
            doomed_snapshot_id: None,
        }
    }

    /// Whether FailNextCopy dooms `snapshot`: the one it picked, or, while it is armed, a
    /// snapshot of the disk started after the call (the first one seen is picked).
    pub fn dooms(&self, snapshot: &Snapshot) -> bool {
        self.doomed_snapshot_id.as_deref() == Some(snapshot.snapshot_id.as_str())
            || self
                .fail_from
                .is_some_and(|from| snapshot.started_at >= from)
    }

    /// Where `snapshot`'s copy stands at `now`: at `default_mibps` until the disk's rate was
    /// set, at that rate after, from the checkpoint when it is this copy's.
    pub fn copy_at(&self, snapshot: &Snapshot, now: Timestamp, default_mibps: u32) -> SteeredCopy {
        let default_kibps = f64::from(default_mibps) * 1024.0;
        let seconds = |from: Timestamp, to: Timestamp| {
            ((to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
        };
        let (copied_kib, rate_kibps) = match (&self.rate, &self.checkpoint) {
            (None, _) => (
                default_kibps * seconds(snapshot.started_at, now),
                default_kibps,
            ),
            (Some(rate), checkpoint) => {
                let kibps = rate.mibps as f64 * 1024.0;
                let at_change = match checkpoint {
                    Some(checkpoint) if checkpoint.snapshot_id == snapshot.snapshot_id => {
                        checkpoint.copied_kib as f64
                    }
                    // Started after the change, or (a create racing SetCopyRate) before it
                    // without a checkpoint: the default rate until the change.
                    _ => default_kibps * seconds(snapshot.started_at, rate.since),
                };
                let after = kibps * seconds(rate.since.max(snapshot.started_at), now);
                (at_change + after, kibps)
            }
        };
        SteeredCopy {
            copied_kib,
            total_kib: f64::from(snapshot.source_disk_size_gib.max(0)) * 1024.0 * 1024.0,
            rate_kibps,
            doomed: self.dooms(snapshot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: &str, size_gib: i32, started_at: Timestamp) -> Snapshot {
        Snapshot::copying(id, size_gib, started_at)
    }

    fn at(seconds: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn a_steered_copy_runs_at_each_rate_in_turn() {
        // 1 GiB = 1,048,576 KiB; the default rate is 1 MiB/s = 1024 KiB/s.
        let snap = snapshot("s-1", 1, at(0));
        let rate = |mibps, since| Some(SteeredRate { mibps, since });
        let checkpoint = |copied_kib| {
            Some(Checkpoint {
                snapshot_id: "s-1".into(),
                copied_kib,
            })
        };
        let cases = [
            ("untouched", None, None, 100, 102_400.0, 1024.0),
            // Stalled at 10 s, from a checkpoint of 10 s at the default rate.
            (
                "stalled",
                rate(0, at(10)),
                checkpoint(10_240),
                100,
                10_240.0,
                0.0,
            ),
            // 2 MiB/s from 10 s: 10 s at 1 MiB/s, then 90 s at 2 MiB/s.
            (
                "faster",
                rate(2, at(10)),
                checkpoint(10_240),
                100,
                10_240.0 + 90.0 * 2048.0,
                2048.0,
            ),
            // A rate set before the snapshot started: its rate from its start.
            ("set before", rate(4, at(-50)), None, 10, 40_960.0, 4096.0),
            // Another copy's checkpoint does not count: the default rate until the change.
            (
                "no checkpoint",
                rate(0, at(10)),
                Some(Checkpoint {
                    snapshot_id: "s-0".into(),
                    copied_kib: 999,
                }),
                100,
                10_240.0,
                0.0,
            ),
        ];
        for (name, rate, checkpoint, now, copied_kib, rate_kibps) in cases {
            let steering = DiskSteering {
                rate,
                checkpoint,
                ..DiskSteering::untouched("d-1")
            };
            let copy = steering.copy_at(&snap, at(now), 1);
            assert_eq!(copy.copied_kib, copied_kib, "{name}");
            assert_eq!(copy.rate_kibps, rate_kibps, "{name}");
            assert!(!copy.doomed, "{name}");
        }
    }

    #[test]
    fn a_doomed_copy_ends_halfway_and_a_stalled_one_looks_again_later() {
        let snap = snapshot("s-1", 1, at(0));
        let doomed = DiskSteering {
            fail_from: Some(at(0)),
            ..DiskSteering::untouched("d-1")
        };
        // 1 GiB at 1 MiB/s: 1024 s in all, halfway at 512 s.
        let copy = doomed.copy_at(&snap, at(500), 1);
        assert!(copy.doomed && !copy.has_ended());
        assert_eq!(copy.remaining(), std::time::Duration::from_secs(12));
        assert_eq!(copy.progress_percent(), 48);
        assert!(doomed.copy_at(&snap, at(512), 1).has_ended());

        let stalled = DiskSteering {
            rate: Some(SteeredRate {
                mibps: 0,
                since: at(0),
            }),
            ..DiskSteering::untouched("d-1")
        };
        let copy = stalled.copy_at(&snap, at(10_000), 1);
        assert!(!copy.has_ended());
        assert_eq!(copy.remaining(), STALLED_REMAINING);
        assert_eq!(copy.progress_percent(), 0);
    }

    #[test]
    fn fail_next_copy_dooms_the_first_snapshot_started_after_it_and_no_other() {
        let armed = DiskSteering {
            fail_from: Some(at(10)),
            ..DiskSteering::untouched("d-1")
        };
        let picked = DiskSteering {
            fail_from: None,
            doomed_snapshot_id: Some("s-2".into()),
            ..DiskSteering::untouched("d-1")
        };
        // Armed again while s-2 is still copying.
        let armed_again = DiskSteering {
            fail_from: Some(at(15)),
            ..picked.clone()
        };
        let cases = [
            (&armed, "s-1", 9, false), // started before the call
            (&armed, "s-2", 10, true), // the first after it (to be picked)
            (&picked, "s-2", 10, true),
            (&picked, "s-3", 20, false), // a later one: the pick is made
            (&armed_again, "s-2", 10, true),
            (&armed_again, "s-3", 20, true),
            (&DiskSteering::untouched("d-1"), "s-4", 30, false),
        ];
        for (steering, id, started, dooms) in cases {
            assert_eq!(
                steering.dooms(&snapshot(id, 1, at(started))),
                dooms,
                "{id} at {started}"
            );
        }
    }

    #[test]
    fn only_forward_steps_and_real_rates_parse() {
        assert!(ClockAdvance::parse(1).is_ok());
        assert!(ClockAdvance::parse(MAX_CLOCK_ADVANCE_SECONDS).is_ok());
        for seconds in [0, -1, MAX_CLOCK_ADVANCE_SECONDS + 1, i64::MIN, i64::MAX] {
            assert!(ClockAdvance::parse(seconds).is_err(), "{seconds}");
        }
        assert!(CopyRateMibps::parse(0).is_ok());
        assert!(CopyRateMibps::parse(MAX_COPY_RATE_MIBPS).is_ok());
        for mibps in [-1, MAX_COPY_RATE_MIBPS + 1, i64::MIN] {
            assert!(CopyRateMibps::parse(mibps).is_err(), "{mibps}");
        }
    }
}
