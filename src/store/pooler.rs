//! Running behind a transaction pooler (pgbouncer `pool_mode = transaction`, a managed
//! database's pooler): the server connection under a session changes between transactions, so
//! nothing may outlive one on the server.
//!
//! - No named prepared statements: sqlx names every statement it prepares (`sqlx_s_N`, even with
//!   its statement cache off) and expects it on the next transaction's server connection. A
//!   session's statements are run unnamed instead ([`SessionConnection`]): each is parsed again,
//!   one more round trip per statement.
//! - No statement outside an explicit transaction: sqlx's extended protocol answers twice per
//!   statement (parse, then execute), and between the two the pooler may hand the client's
//!   connection to another server connection, where the unnamed statement does not exist. So
//!   every session, reads too, runs inside `BEGIN` … `COMMIT` (`SqlStore::read`).
//! - No session state: migrations take an advisory lock, so they run on a direct connection
//!   (`--migration-database-url`), as will anything that LISTENs.
//!
//! Off (the default), a session's statements are prepared once per connection and cached, as
//! sqlx does by default, and reads run outside a transaction: no round trip is added.
//!
//! Either way, a statement's error that says the server is gone or takes no writes raises the
//! pool's [`Fence`] (a failover: `super::fence`).

use std::fmt;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _, TryFutureExt as _, TryStreamExt as _};
use sqlx::error::BoxDynError;
use sqlx::{Database, Describe, Either, Execute, Executor};

use super::fence::Fence;

/// A session's connection as its statements' executor: each statement as it is (prepared and
/// cached by name) or, behind a transaction pooler, unnamed; its errors shown to the fence.
pub struct SessionConnection<'c, DB: Database> {
    connection: &'c mut DB::Connection,
    unnamed: bool,
    fence: &'c Fence,
}

impl<'c, DB: Database> SessionConnection<'c, DB> {
    pub(super) fn new(connection: &'c mut DB::Connection, unnamed: bool, fence: &'c Fence) -> Self {
        Self {
            connection,
            unnamed,
            fence,
        }
    }

    /// The connection itself, for a backend that is never behind a pooler (SQLite).
    pub(super) fn into_inner(self) -> &'c mut DB::Connection {
        self.connection
    }
}

impl<DB: Database> fmt::Debug for SessionConnection<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConnection")
            .field("unnamed", &self.unnamed)
            .finish_non_exhaustive()
    }
}

impl<'c, DB> Executor<'c> for SessionConnection<'c, DB>
where
    DB: Database,
    &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<DB::QueryResult, DB::Row>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let fence = self.fence;
        let rows = if self.unnamed {
            self.connection.fetch_many(Unnamed(query))
        } else {
            self.connection.fetch_many(query)
        };
        rows.inspect_err(move |err| fence.note(err)).boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<DB::Row>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let fence = self.fence;
        let row = if self.unnamed {
            self.connection.fetch_optional(Unnamed(query))
        } else {
            self.connection.fetch_optional(query)
        };
        row.inspect_err(move |err| fence.note(err)).boxed()
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, Result<DB::Statement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.connection.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<DB>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.connection.describe(sql)
    }
}

/// A statement run without a name: parsed into the unnamed statement, which the next one
/// replaces, and never cached.
struct Unnamed<E>(E);

impl<'q, DB: Database, E: Execute<'q, DB>> Execute<'q, DB> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }

    fn statement(&self) -> Option<&DB::Statement<'q>> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<DB::Arguments<'q>>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}
