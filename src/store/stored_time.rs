//! [`StoredTime`]: a stored instant as the hot rows decode it.

use chrono::DateTime;
use sqlx::Database;
use sqlx::decode::Decode;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgValueFormat, PgValueRef, Postgres};
use sqlx::sqlite::{Sqlite, SqliteValueRef};
use sqlx::types::Type;

use crate::domain::Timestamp;

/// PostgreSQL's epoch, 2000-01-01T00:00:00Z, in microseconds after the Unix epoch.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A stored instant, decoded as sqlx decodes a [`Timestamp`] but for PostgreSQL's binary
/// `timestamptz` (microseconds after 2000-01-01), which it turns into an instant with one
/// `DateTime::from_timestamp_micros` instead of sqlx's calendar arithmetic from 2000-01-01:
/// 154 instructions an instant against 394, on the four instants of every DescribeSnapshots row
/// (bench/README.md, "instants decoded without calendar arithmetic"). An instant out of
/// chrono's range is an error here, where sqlx's own decoder panics. SQLite's instants (text)
/// are decoded by sqlx's.
pub(crate) struct StoredTime(pub Timestamp);

/// Typed as the instant it decodes, on either backend.
impl<DB: Database> Type<DB> for StoredTime
where
    Timestamp: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <Timestamp as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <Timestamp as Type<DB>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for StoredTime {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.format() == PgValueFormat::Text {
            return <Timestamp as Decode<Postgres>>::decode(value).map(Self);
        }
        let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
        let micros = i64::from_be_bytes(bytes);
        micros
            .checked_add(POSTGRES_EPOCH_UNIX_MICROS)
            .and_then(DateTime::from_timestamp_micros)
            .map(Self)
            .ok_or_else(|| format!("timestamptz {micros} µs after 2000 is out of range").into())
    }
}

impl<'r> Decode<'r, Sqlite> for StoredTime {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        <Timestamp as Decode<Sqlite>>::decode(value).map(Self)
    }
}
