//! The soft/hard app-update check: per platform, a `latest` version (older ones are told an
//! update exists) and a `minimum` (older ones must update). The thresholds are stored and
//! changed at runtime; with Redis they are cached there, and a change clears the cache so
//! every replica answers with it at once.

use std::sync::Arc;

use crate::store::{SqlStore, StoreError};

/// A version as apps write it: up to four numbers with dots (`2`, `2.0`, `2.0.1`). It
/// compares by its numbers only: `2.0` equals `2.0.0`.
#[derive(Debug, Clone, Copy)]
pub struct Version([u32; 4], u8);

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl Version {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = [0u32; 4];
        let mut count = 0u8;
        for (i, part) in text.trim().split('.').enumerate() {
            if i >= 4
                || part.is_empty()
                || part.len() > 9
                || !part.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            parts[i] = part.parse().ok()?;
            count += 1;
        }
        Some(Self(parts, count))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = usize::from(self.1.max(1));
        let parts: Vec<String> = self.0[..shown].iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub latest: Version,
    pub minimum: Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    pub soft_update: bool,
    pub hard_update: bool,
}

/// Pure: what to tell an app at `version`. No thresholds: nothing to update.
pub fn advise(version: Version, thresholds: Option<&Thresholds>) -> Advice {
    match thresholds {
        None => Advice {
            soft_update: false,
            hard_update: false,
        },
        Some(t) => Advice {
            soft_update: version < t.latest,
            hard_update: version < t.minimum,
        },
    }
}

pub fn valid_platform(platform: &str) -> bool {
    (1..=32).contains(&platform.len())
        && platform
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The thresholds, from the database, through Redis when there is one.
pub struct Versions {
    store: Arc<SqlStore>,
    cache: Option<redis::aio::ConnectionManager>,
}

const CACHE_SECS: u64 = 300;

impl Versions {
    pub async fn new(store: Arc<SqlStore>, redis_url: Option<&str>) -> anyhow::Result<Self> {
        let cache = match redis_url {
            Some(url) => Some(redis::aio::ConnectionManager::new(redis::Client::open(url)?).await?),
            None => None,
        };
        Ok(Self { store, cache })
    }

    fn cache_key(platform: &str) -> String {
        format!("herald:app-versions:{platform}")
    }

    pub async fn get(&self, platform: &str) -> Result<Option<Thresholds>, StoreError> {
        let key = Self::cache_key(platform);
        if let Some(cache) = &self.cache {
            let mut connection = cache.clone();
            let cached: Result<Option<String>, _> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await;
            match cached {
                Ok(Some(text)) => {
                    if text.is_empty() {
                        return Ok(None);
                    }
                    if let Some((latest, minimum)) = text.split_once(' ')
                        && let (Some(latest), Some(minimum)) =
                            (Version::parse(latest), Version::parse(minimum))
                    {
                        return Ok(Some(Thresholds { latest, minimum }));
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%err, "app-version cache unavailable; reading the database");
                }
            }
        }
        let stored = self.store.app_version(platform).await?;
        let thresholds = stored.and_then(|(latest, minimum)| {
            Some(Thresholds {
                latest: Version::parse(&latest)?,
                minimum: Version::parse(&minimum)?,
            })
        });
        if let Some(cache) = &self.cache {
            let text =
                thresholds.map_or_else(String::new, |t| format!("{} {}", t.latest, t.minimum));
            let mut connection = cache.clone();
            // NX: a change made since this read wrote its own value, which must stay.
            let _: Result<Option<String>, _> = redis::cmd("SET")
                .arg(&key)
                .arg(text)
                .arg("NX")
                .arg("EX")
                .arg(CACHE_SECS)
                .query_async(&mut connection)
                .await;
        }
        Ok(thresholds)
    }

    /// Stores new thresholds and puts them in the cache, so every replica answers with them
    /// at once.
    pub async fn set(&self, platform: &str, thresholds: &Thresholds) -> Result<(), StoreError> {
        self.store
            .set_app_version(
                platform,
                &thresholds.latest.to_string(),
                &thresholds.minimum.to_string(),
                crate::outbox::now_us(),
            )
            .await?;
        if let Some(cache) = &self.cache {
            let mut connection = cache.clone();
            let written: Result<(), _> = redis::cmd("SET")
                .arg(Self::cache_key(platform))
                .arg(format!("{} {}", thresholds.latest, thresholds.minimum))
                .arg("EX")
                .arg(CACHE_SECS)
                .query_async(&mut connection)
                .await;
            if let Err(err) = written {
                tracing::warn!(%err, "cannot update the cached app versions; other replicas answer from the cache for up to 5 minutes");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn versions_compare_by_number_not_text() {
        assert!(v("2.10.0") > v("2.9.9"));
        assert_eq!(v("2.0"), v("2.0.0"));
        // minimum 2.0.0 with latest 2.0 is not "minimum above latest"
        assert!(v("2.0.0") <= v("2.0"));
        assert_eq!(v("2.0.1").to_string(), "2.0.1");
        for bad in ["", "2.", "v2", "2..1", "1.2.3.4.5", "-1", "1.x"] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn below_latest_is_a_soft_update_below_minimum_a_hard_one() {
        let t = Thresholds {
            latest: v("2.1.0"),
            minimum: v("2.0.0"),
        };
        let advice = |version| advise(v(version), Some(&t));
        assert_eq!(
            advice("2.1.0"),
            Advice {
                soft_update: false,
                hard_update: false
            }
        );
        assert_eq!(
            advice("2.0.1"),
            Advice {
                soft_update: true,
                hard_update: false
            }
        );
        assert_eq!(
            advice("2.0"),
            Advice {
                soft_update: true,
                hard_update: false
            }
        );
        assert_eq!(
            advice("1.9.9"),
            Advice {
                soft_update: true,
                hard_update: true
            }
        );
        assert_eq!(
            advise(v("0.1"), None),
            Advice {
                soft_update: false,
                hard_update: false
            }
        );
    }
}
