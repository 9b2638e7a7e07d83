//! Per-account throttling (`SNAPSHOTD_RATE_LIMIT`): one GCRA token bucket per account, from
//! `governor`, checked after the caller is identified and before any database work. One
//! throttle serves both edges, so an account's budget is the same whichever protocol it uses.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimit;

/// The account used up its bucket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("account {account_id} is over its rate limit")]
pub struct Throttled {
    pub account_id: String,
    pub limit: RateLimit,
    /// When the next call would be admitted.
    pub retry_after: Duration,
}

pub struct Throttle {
    limit: RateLimit,
    buckets: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl Throttle {
    pub fn new(limit: RateLimit) -> Self {
        // `RateLimit` parsing refuses zero, so both are non-zero; `MIN` is only the type's floor.
        let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limit,
            buckets: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one token from the account's bucket, or says how long until one is there.
    pub fn admit(&self, account_id: &str) -> Result<(), Throttled> {
        match self.buckets.check_key(&account_id.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(Throttled {
                account_id: account_id.to_owned(),
                limit: self.limit,
                // Rounded up to whole milliseconds: a client that waits this long gets in.
                retry_after: round_up_to_millis(not_until.wait_time_from(self.clock.now())),
            }),
        }
    }

    /// Forgets buckets that are full again, so idle accounts cost no memory.
    pub fn forget_idle_accounts(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }
}

fn round_up_to_millis(wait: Duration) -> Duration {
    let millis = wait.as_nanos().div_ceil(1_000_000).max(1);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_account_waits_and_others_do_not() {
        let throttle = Throttle::new(RateLimit {
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(throttle.admit("acct-a").is_ok());
        }
        match throttle.admit("acct-a") {
            Err(Throttled { retry_after, .. }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1))
            }
            other => panic!("expected Throttled, got {other:?}"),
        }
        assert!(throttle.admit("acct-b").is_ok(), "buckets are per account");
    }

    #[test]
    fn waits_round_up_to_a_whole_millisecond() {
        assert_eq!(
            round_up_to_millis(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
        assert_eq!(
            round_up_to_millis(Duration::from_micros(1500)),
            Duration::from_millis(2)
        );
        assert_eq!(round_up_to_millis(Duration::ZERO), Duration::from_millis(1));
    }
}
