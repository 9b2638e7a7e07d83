//! Who may hold how many of an edge's slots: each peer (and, on gRPC, each caller) at most its
//! share, so one client cannot take every slot. Both edges count their holders here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// One holder's share of `max_concurrent` slots: three quarters, so the others always keep some
/// (all of them under 4 slots, where a quarter is less than one).
pub fn default_share(max_concurrent: u32) -> u32 {
    (max_concurrent - max_concurrent / 4).max(1)
}

/// The share key of a peer: `peer/<IPv4 address>` (an IPv4-mapped IPv6 address is its IPv4
/// one), or `peer/<prefix>/64` for IPv6, since one host commonly holds a whole /64 and could
/// otherwise pick a new address per connection.
pub fn peer_of(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(ip) => format!("peer/{ip}"),
        IpAddr::V6(ip) => {
            let prefix = Ipv6Addr::from_bits(ip.to_bits() & !u128::from(u64::MAX));
            format!("peer/{prefix}/64")
        }
    }
}

/// The slots each holder (`peer/…`, `account/…`, `admin`) holds now; one holding none has no
/// entry.
#[derive(Debug, Default)]
pub struct Shares {
    held: Mutex<HashMap<String, u32>>,
}

/// A holder already holds its whole share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub holder: String,
    pub limit: u32,
}

impl Shares {
    /// One more slot for `holder`, if it holds fewer than `limit`; given back when the
    /// [`Share`] is dropped.
    pub fn take(self: &Arc<Self>, holder: String, limit: u32) -> Result<Share, Busy> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(holder.clone()).or_insert(0);
        if *count >= limit {
            return Err(Busy { holder, limit });
        }
        *count += 1;
        Ok(Share {
            shares: Arc::clone(self),
            holder,
        })
    }
}

/// One of the slots a holder holds.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
    holder: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self
            .shares
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.holder) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_holds_at_most_its_share_and_gives_it_back() {
        let shares = Arc::new(Shares::default());
        let first = shares.take("peer/10.0.0.1".into(), 2).expect("one");
        let _second = shares.take("peer/10.0.0.1".into(), 2).expect("two");
        assert_eq!(
            shares.take("peer/10.0.0.1".into(), 2).unwrap_err(),
            Busy {
                holder: "peer/10.0.0.1".into(),
                limit: 2
            }
        );
        assert!(
            shares.take("peer/10.0.0.2".into(), 2).is_ok(),
            "another peer"
        );
        drop(first);
        assert!(shares.take("peer/10.0.0.1".into(), 2).is_ok(), "given back");
    }

    #[test]
    fn a_peer_is_its_ipv4_address_or_its_ipv6_slash_64() {
        let cases = [
            ("127.0.0.1", "peer/127.0.0.1"),
            ("::ffff:10.1.2.3", "peer/10.1.2.3"),
            ("::1", "peer/::/64"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "peer/2001:db8:1:2::/64"),
            ("2001:db8:1:2::1", "peer/2001:db8:1:2::/64"),
            ("2001:db8:1:3::1", "peer/2001:db8:1:3::/64"),
        ];
        for (ip, peer) in cases {
            assert_eq!(peer_of(ip.parse().unwrap()), peer, "{ip}");
        }
    }

    #[test]
    fn a_share_is_three_quarters_and_at_least_one() {
        assert_eq!(default_share(32), 24);
        assert_eq!(default_share(4), 3);
        assert_eq!(default_share(1), 1);
    }
}
