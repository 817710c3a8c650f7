//! What both admin listeners need to serve a live dashboard page: the embedded assets the
//! two pages share, the headers every page answer carries, the per-second history behind the
//! sparklines, and the guard that keeps a browser's other tabs out of the admin API.
//!
//! The pages poll one JSON document a second rather than holding a Server-Sent Events
//! stream: a poll needs nothing from the admin listener between answers, passes any proxy,
//! reconnects by itself after an agent restart, and tells the page it is stale simply by
//! failing. Each answer carries only the history samples the page has not seen (`since`).

mod guard;
mod history;

pub use guard::{refusal, RequestView};
pub use history::{History, HistoryView};

/// One embedded file of a dashboard page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// The script both pages load first: formatting, sparklines, the poll loop and its staleness.
pub const COMMON_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("common.js"),
};

/// The style sheet both pages use (light and dark, by the reader's preference).
pub const COMMON_CSS: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("common.css"),
};

/// The pages' icon (without one, a browser asks for `/favicon.ico` and logs the 404).
pub const FAVICON: Asset = Asset {
    content_type: "image/svg+xml",
    body: include_str!("favicon.svg"),
};

/// The shared assets by path.
pub fn shared_asset(path: &str) -> Option<Asset> {
    match path {
        "/dashboard/common.js" => Some(COMMON_JS),
        "/dashboard/common.css" => Some(COMMON_CSS),
        "/dashboard/favicon.svg" => Some(FAVICON),
        _ => None,
    }
}

/// Headers on every dashboard answer. The policy allows this origin's own scripts, styles
/// and fetches only, so data shown on the page (a shield note, a route name) can never run
/// as script even if a page bug wrote it as markup; and no other site may frame the page.
pub const PAGE_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// Milliseconds since the Unix epoch (0 if the clock is before it): the time a sample or
/// a count is stamped with, as the page's clock reads it.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `since` parameter of a state request: the last history sample the page has, if
/// given. `Err` (for a 400) when it is there but no whole number, or there twice, rather
/// than answering as if it were absent.
pub fn since_param(query: &str) -> Result<Option<u64>, String> {
    crate::admin::number_param(query, "since")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_found_by_path_only() {
        assert_eq!(shared_asset("/dashboard/common.js"), Some(COMMON_JS));
        assert_eq!(shared_asset("/dashboard/common.css"), Some(COMMON_CSS));
        assert_eq!(shared_asset("/dashboard/../common.js"), None);
        assert!(COMMON_JS.body.contains("Sluice"));
    }

    #[test]
    fn since_is_read_from_the_query() {
        assert_eq!(since_param("since=42"), Ok(Some(42)));
        assert_eq!(since_param("a=1&since=7"), Ok(Some(7)));
        assert_eq!(since_param(""), Ok(None));
        assert_eq!(since_param("a=1"), Ok(None));
        for bad in ["since=x", "since=-1", "since=", "since=1&since=2"] {
            assert!(since_param(bad).is_err(), "{bad}");
        }
    }
}
