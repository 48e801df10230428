//! Time in Herald: `jiff::Timestamp` in code, the one type for an instant across the
//! workspace (`jiff` also knows time zones, which reports and quiet hours need), and
//! microseconds since the Unix epoch where it is stored (`*_at_us` columns) or carried on
//! the wire (the envelope's `timestamp-micros`).

use jiff::Timestamp;

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    Timestamp::now().as_microsecond()
}

/// `at` in microseconds since the Unix epoch.
pub fn micros(at: Timestamp) -> i64 {
    at.as_microsecond()
}

/// The time `us` microseconds after the Unix epoch (the nearest representable time for a
/// value outside jiff's years -9999 to 9999, which no stored value is).
pub fn at(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(if us < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_since_the_epoch() {
        assert_eq!(micros(Timestamp::UNIX_EPOCH), 0);
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        assert_eq!(micros(at), 1_700_000_000_000_000);
        assert!(now_us() > 1_700_000_000_000_000);
        assert_eq!(super::at(1_700_000_000_000_000), at);
        assert_eq!(super::at(i64::MAX), Timestamp::MAX);
    }
}
