//! The one reading of wall-clock time the services store: microseconds since the Unix epoch,
//! as the databases keep it (`*_at_us` columns) and as event envelopes carry it.

use time::OffsetDateTime;

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    micros(OffsetDateTime::now_utc())
}

/// `at` in microseconds since the Unix epoch (saturating far outside any stored range).
pub fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// The time `us` microseconds after the Unix epoch (the epoch itself for a value outside
/// any representable time, which no stored value is).
pub fn at(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_since_the_epoch() {
        assert_eq!(micros(OffsetDateTime::UNIX_EPOCH), 0);
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(micros(at), 1_700_000_000_000_000);
        assert!(now_us() > 1_700_000_000_000_000);
        assert_eq!(super::at(1_700_000_000_000_000), at);
    }
}
