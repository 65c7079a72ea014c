//! Times as PostgreSQL holds them: `timestamptz` read and bound as raw microseconds (so
//! that no value, `'infinity'` included, can make a decoder panic), and SQL for "the
//! server's clock plus a duration".

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgRow, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Row, Type};

/// Time-to-lives from this many microseconds on (about 146,000 years) are kept as
/// `'infinity'`: never expiring, and far from the end of PostgreSQL's time range.
pub(crate) const FOREVER_MICROS: u128 = 1 << 62;

/// A time-to-live as bound to [`deadline`]: whole microseconds, rounded up (so that a
/// non-zero time-to-live never expires at once); `None` for "forever".
pub(crate) fn ttl_micros(ttl: Duration) -> Option<i64> {
    let micros = ttl.as_nanos().div_ceil(1000);
    if micros >= FOREVER_MICROS {
        None
    } else {
        i64::try_from(micros).ok()
    }
}

/// The SQL of "the server's clock now, plus the time-to-live in parameter `$param`"
/// (a `bigint` of microseconds from [`ttl_micros`], NULL for forever).
///
/// Integer arithmetic throughout, exact to the microsecond for every time-to-live:
/// whole hours (`make_interval` multiplies them as integers), then the remaining whole
/// seconds and microseconds. `interval '1 hour'` never means a calendar day, so the
/// session's time zone plays no part.
pub(crate) fn deadline(param: u8) -> String {
    later("clock_timestamp()", param)
}

/// The SQL of "`base` (a `timestamptz` expression of the server's clock) plus the
/// microseconds in parameter `$param`", with [`deadline`]'s arithmetic: NULL means
/// forever (`'infinity'`). The parameter must hold a value from [`ttl_micros`] (below
/// 2⁶²), so that the sum stays inside PostgreSQL's range.
pub(crate) fn later(base: &str, param: u8) -> String {
    format!(
        "COALESCE({base} \
         + make_interval(hours => (${param} / 3600000000)::int4, \
                         secs => ((${param} % 3600000000) / 1000000)::float8) \
         + (${param} % 1000000) * interval '1 microsecond', 'infinity'::timestamptz)"
    )
}

/// Unix time of PostgreSQL's epoch (2000-01-01 00:00:00 UTC), in microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
/// The earliest `timestamptz` (4714-11-24 00:00:00 UTC BC), in [`PgTime`] microseconds.
const PG_MIN_MICROS: i64 = -211_813_488_000_000_000;
/// Just past the latest `timestamptz` (294277-01-01 00:00:00 UTC), in [`PgTime`]
/// microseconds.
const PG_END_MICROS: i64 = 9_223_371_331_200_000_000;

/// A finite `timestamptz` as PostgreSQL sends it: microseconds since 2000-01-01 UTC.
///
/// Bound and read as such, so that nothing on the way can panic: a stored value that
/// `chrono` cannot represent (`infinity`, say) is a `None` from
/// [`PgTime::to_datetime`], never an overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PgTime(pub(crate) i64);

/// Where a time falls against PostgreSQL's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InRange {
    /// Before the earliest `timestamptz`.
    Before,
    /// A `timestamptz`.
    At(PgTime),
    /// After the latest `timestamptz`.
    After,
}

impl PgTime {
    /// `t`, cut to the microsecond (towards the past, as [`mink_es::now_micros`] does).
    pub(crate) fn floor(t: DateTime<Utc>) -> InRange {
        PgTime::from_unix_micros(i128::from(t.timestamp_micros()))
    }

    /// `t`, rounded up to the next whole microsecond. Stored times are whole
    /// microseconds, so for a stored `s`: `s >= t` exactly when `s >= ceil(t)`, and
    /// `s < t` exactly when `s < ceil(t)`.
    pub(crate) fn ceil(t: DateTime<Utc>) -> InRange {
        let floor = i128::from(t.timestamp_micros());
        let exact = t.timestamp_subsec_nanos().is_multiple_of(1000);
        PgTime::from_unix_micros(if exact { floor } else { floor + 1 })
    }

    fn from_unix_micros(unix: i128) -> InRange {
        let pg = unix - i128::from(PG_EPOCH_UNIX_MICROS);
        if pg < i128::from(PG_MIN_MICROS) {
            InRange::Before
        } else if pg >= i128::from(PG_END_MICROS) {
            InRange::After
        } else {
            // In range, so it fits.
            i64::try_from(pg).map_or(InRange::After, |pg| InRange::At(PgTime(pg)))
        }
    }

    /// The time, or what is wrong with it.
    pub(crate) fn checked(self) -> Result<DateTime<Utc>, String> {
        self.to_datetime().ok_or_else(|| match self.0 {
            i64::MAX => "it is 'infinity'".to_owned(),
            i64::MIN => "it is '-infinity'".to_owned(),
            us => format!("{us} µs after 2000-01-01 is out of range"),
        })
    }

    /// The time, if `chrono` can represent it.
    pub(crate) fn to_datetime(self) -> Option<DateTime<Utc>> {
        self.0
            .checked_add(PG_EPOCH_UNIX_MICROS)
            .and_then(DateTime::from_timestamp_micros)
    }
}

/// Reads column `idx` of `row`, a `timestamptz`, through its raw microseconds: a value
/// `chrono` cannot hold (`'infinity'`, a year beyond 262,143) or that cannot be read is
/// an `Err` describing it, never a panic.
pub(crate) fn read_time(row: &PgRow, idx: usize) -> Result<DateTime<Utc>, String> {
    read_opt_time(row, idx)?.ok_or_else(|| "it is missing".to_owned())
}

/// [`read_time`] for a column that may be NULL.
pub(crate) fn read_opt_time(row: &PgRow, idx: usize) -> Result<Option<DateTime<Utc>>, String> {
    let t: Option<PgTime> = row.try_get(idx).map_err(|e| e.to_string())?;
    t.map(PgTime::checked).transpose()
}

impl Type<Postgres> for PgTime {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for PgTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl Decode<'_, Postgres> for PgTime {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        // Prepared statements receive the binary form: the 8-byte microsecond count.
        Ok(PgTime(<i64 as Decode<Postgres>>::decode(value)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_lives_round_up_and_saturate_to_forever() {
        assert_eq!(ttl_micros(Duration::ZERO), Some(0));
        assert_eq!(ttl_micros(Duration::from_nanos(1)), Some(1));
        assert_eq!(ttl_micros(Duration::from_micros(5)), Some(5));
        assert_eq!(ttl_micros(Duration::from_nanos(5_001)), Some(6));
        assert_eq!(ttl_micros(Duration::from_secs(3600)), Some(3_600_000_000));
        assert_eq!(
            ttl_micros(Duration::from_micros((1 << 62) - 1)),
            Some((1 << 62) - 1)
        );
        assert_eq!(ttl_micros(Duration::from_micros(1 << 62)), None);
        assert_eq!(ttl_micros(Duration::MAX), None);
    }

    #[test]
    fn deadlines_use_the_parameter_everywhere() {
        let sql = deadline(7);
        assert_eq!(sql.matches("$7").count(), 3);
        assert!(sql.contains("clock_timestamp()"));
        assert!(!sql.contains("now()"));
    }

    #[test]
    fn times_convert_within_postgres_range() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            PgTime::floor(t("2000-01-01T00:00:00Z")),
            InRange::At(PgTime(0))
        );
        assert_eq!(
            PgTime::floor(t("2000-01-01T00:00:00.0000019Z")),
            InRange::At(PgTime(1))
        );
        assert_eq!(
            PgTime::ceil(t("2000-01-01T00:00:00.0000011Z")),
            InRange::At(PgTime(2))
        );
        assert_eq!(
            PgTime::floor(t("1999-12-31T23:59:59.9999995Z")),
            InRange::At(PgTime(-1))
        );
        assert_eq!(
            PgTime::ceil(t("1999-12-31T23:59:59.9999995Z")),
            InRange::At(PgTime(0))
        );
        // The first instant PostgreSQL stores is 4714-11-24 BC (year -4713).
        let first = chrono::NaiveDate::from_ymd_opt(-4713, 11, 24)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap()
            .and_utc();
        assert_eq!(PgTime::floor(first), InRange::At(PgTime(PG_MIN_MICROS)));
        assert_eq!(
            PgTime::floor(first - chrono::TimeDelta::nanoseconds(1)),
            InRange::Before
        );
        assert_eq!(
            PgTime::ceil(first - chrono::TimeDelta::nanoseconds(1)),
            InRange::At(PgTime(PG_MIN_MICROS))
        );
        assert_eq!(PgTime::floor(DateTime::<Utc>::MIN_UTC), InRange::Before);
        // chrono ends before PostgreSQL does.
        assert!(matches!(
            PgTime::ceil(DateTime::<Utc>::MAX_UTC),
            InRange::At(_)
        ));
        assert_eq!(
            PgTime::from_unix_micros(i128::from(PG_END_MICROS) + i128::from(PG_EPOCH_UNIX_MICROS)),
            InRange::After
        );
        // Round trips, and values chrono cannot hold are None, not a panic.
        let now = mink_es::now_micros();
        let InRange::At(p) = PgTime::floor(now) else {
            panic!("now is in range")
        };
        assert_eq!(p.to_datetime(), Some(now));
        assert_eq!(PgTime(i64::MAX).to_datetime(), None);
        assert_eq!(PgTime(i64::MIN).to_datetime(), None);
        assert_eq!(PgTime(PG_END_MICROS - 1).to_datetime(), None);
    }
}
