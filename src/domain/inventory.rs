//! The inventory the control plane pushes: accounts, instances, disks and their states,
//! spelled as the seed spells them (`In_use`, `Running`, `cloud_essd`).

use super::{ParseError, Timestamp};

/// Disk categories known to ECS. Local and ephemeral disks cannot be snapshotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskCategory {
    Cloud,
    CloudEfficiency,
    CloudSsd,
    CloudEssd,
    CloudAuto,
    CloudEssdEntry,
    LocalSsdPro,
    LocalHddPro,
    Ephemeral,
    EphemeralSsd,
    ElasticEphemeralDiskStandard,
    ElasticEphemeralDiskPremium,
}

impl DiskCategory {
    pub const ALL: [DiskCategory; 12] = [
        Self::Cloud,
        Self::CloudEfficiency,
        Self::CloudSsd,
        Self::CloudEssd,
        Self::CloudAuto,
        Self::CloudEssdEntry,
        Self::LocalSsdPro,
        Self::LocalHddPro,
        Self::Ephemeral,
        Self::EphemeralSsd,
        Self::ElasticEphemeralDiskStandard,
        Self::ElasticEphemeralDiskPremium,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cloud => "cloud",
            Self::CloudEfficiency => "cloud_efficiency",
            Self::CloudSsd => "cloud_ssd",
            Self::CloudEssd => "cloud_essd",
            Self::CloudAuto => "cloud_auto",
            Self::CloudEssdEntry => "cloud_essd_entry",
            Self::LocalSsdPro => "local_ssd_pro",
            Self::LocalHddPro => "local_hdd_pro",
            Self::Ephemeral => "ephemeral",
            Self::EphemeralSsd => "ephemeral_ssd",
            Self::ElasticEphemeralDiskStandard => "elastic_ephemeral_disk_standard",
            Self::ElasticEphemeralDiskPremium => "elastic_ephemeral_disk_premium",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == raw)
    }

    /// Cloud disks can be snapshotted; local and ephemeral ones cannot
    /// (`DiskCategory.OperationNotSupported`).
    pub fn supports_snapshots(self) -> bool {
        matches!(
            self,
            Self::Cloud
                | Self::CloudEfficiency
                | Self::CloudSsd
                | Self::CloudEssd
                | Self::CloudAuto
                | Self::CloudEssdEntry
        )
    }
}

text_enum!(InstanceStatus {
    Pending => "Pending",
    Starting => "Starting",
    Running => "Running",
    Stopping => "Stopping",
    Stopped => "Stopped",
});

text_enum!(DiskType {
    System => "system",
    Data => "data",
});

// The seed's spellings: `In_use` is the only status a snapshot can be taken in.
text_enum!(DiskStatus {
    InUse => "In_use",
    Available => "Available",
    Attaching => "Attaching",
    Detaching => "Detaching",
    Creating => "Creating",
    ReIniting => "ReIniting",
});

/// A tenant account as pushed by the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub account_id: String,
    pub snapshot_service_activated: bool,
    pub insufficient_balance: bool,
}

/// The OperationLocks reason that forbids snapshots.
pub const SECURITY_LOCK: &str = "security";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub instance_id: String,
    pub account_id: String,
    pub status: InstanceStatus,
    pub created_at: Timestamp,
    /// `None`: never started since creation.
    pub last_started_at: Option<Timestamp>,
    pub lock_reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub disk_id: String,
    pub account_id: String,
    pub category: DiskCategory,
    pub disk_type: DiskType,
    pub status: DiskStatus,
    /// The instance it is attached to now.
    pub instance_id: Option<String>,
    pub size_gib: i32,
    pub created_at: Timestamp,
    /// Subscription end; `None` for pay-as-you-go.
    pub expires_at: Option<Timestamp>,
    pub ever_attached: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn every_category_round_trips_and_only_cloud_disks_support_snapshots() {
        for category in DiskCategory::ALL {
            assert_eq!(DiskCategory::parse(category.as_str()), Some(category));
            assert_eq!(
                category.supports_snapshots(),
                category.as_str().starts_with("cloud")
            );
        }
        assert_eq!(DiskCategory::parse("nvme"), None);
    }
}

/// A key pair the ECS-compatible edge verifies signatures with; the key id names exactly one
/// account, the caller's identity on that edge.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub account_id: String,
}

/// Never the secret: a key is logged and debugged by its id and account only.
impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .field("account_id", &self.account_id)
            .finish_non_exhaustive()
    }
}

/// Secrets shorter than this are refused: an HMAC key a client could guess is no key.
pub const MIN_ACCESS_KEY_SECRET_LEN: usize = 16;
/// Longer secrets buy nothing for HMAC and bloat every lookup.
pub const MAX_ACCESS_KEY_SECRET_LEN: usize = 128;

impl AccessKey {
    /// A key id is a plain id (as ECS's `LTAI…`); a secret is 16 to 128 printable ASCII
    /// characters without spaces (SDKs send it through environment variables and config files).
    pub fn parse(access_key_id: &str, secret: &str, account_id: &str) -> Result<Self, ParseError> {
        let required = |field, raw: &str| {
            if raw.is_empty() {
                Err(ParseError::MissingParameter { field })
            } else {
                Ok(())
            }
        };
        required("access_key.access_key_id", access_key_id)?;
        required("access_key.access_key_secret", secret)?;
        required("access_key.account_id", account_id)?;
        for (field, id) in [
            ("access_key.access_key_id", access_key_id),
            ("access_key.account_id", account_id),
        ] {
            if !super::is_plain_id(id) {
                return Err(ParseError::InvalidParameter {
                    field,
                    why: "must be 1 to 64 of [A-Za-z0-9._:-]".to_owned(),
                });
            }
        }
        let printable = secret.bytes().all(|b| b.is_ascii_graphic());
        if !printable
            || !(MIN_ACCESS_KEY_SECRET_LEN..=MAX_ACCESS_KEY_SECRET_LEN).contains(&secret.len())
        {
            return Err(ParseError::InvalidParameter {
                field: "access_key.access_key_secret",
                why: format!(
                    "must be {MIN_ACCESS_KEY_SECRET_LEN} to {MAX_ACCESS_KEY_SECRET_LEN} printable ASCII characters without spaces"
                ),
            });
        }
        Ok(Self {
            access_key_id: access_key_id.to_owned(),
            access_key_secret: secret.to_owned(),
            account_id: account_id.to_owned(),
        })
    }
}
