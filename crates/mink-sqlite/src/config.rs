//! How a [`crate::SqliteStore`] opens its file.

use std::time::Duration;

use mink_es::StoreLimits;

/// How hard SQLite pushes a commit to disk (`PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous=NORMAL` (the default). In WAL mode a commit is written to the log
    /// (into the OS page cache) but not synced: a crash of the process, even `kill -9`,
    /// loses nothing that was acknowledged; a power loss or OS crash may lose the last
    /// transactions, but never corrupts the file.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is synced to the device before it is
    /// acknowledged, so it also survives a power loss. Appends are slower.
    Full,
}

impl Synchronous {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Options for [`crate::SqliteStore::open_with`].
///
/// ```
/// use std::time::Duration;
/// use mink_sqlite::{SqliteConfig, Synchronous};
/// let config = SqliteConfig::default()
///     .synchronous(Synchronous::Full)
///     .busy_timeout(Duration::from_secs(10))
///     .read_connections(2);
/// assert_eq!(config.read_connections, 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// Commit durability. Default [`Synchronous::Normal`].
    pub synchronous: Synchronous,
    /// Limits enforced on appends. Default [`StoreLimits::default`].
    pub limits: StoreLimits,
    /// How long a statement waits for a lock held by another connection (another
    /// process writing the same file) before failing with a transient
    /// [`mink_es::Error::Backend`]. Default 5 s.
    pub busy_timeout: Duration,
    /// Number of read-only connections used for reads, opened with the store. With 0,
    /// reads share the writer connection. Default 4.
    pub read_connections: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            synchronous: Synchronous::Normal,
            limits: StoreLimits::default(),
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
        }
    }
}

impl SqliteConfig {
    /// Sets the commit durability.
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets the append limits.
    pub fn limits(mut self, limits: StoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets how long a statement waits for another connection's lock.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets the number of read connections (0 = reads use the writer connection).
    pub fn read_connections(mut self, n: usize) -> Self {
        self.read_connections = n;
        self
    }
}
