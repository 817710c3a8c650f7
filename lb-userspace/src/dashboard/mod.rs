//! The dashboard page `sluice-lb`'s admin listener serves at `/`: HTML, script and style
//! embedded in the binary, polling `/dashboard/state` once a second (see
//! [`sluice_util::dashboard`] for why a poll and not a stream).

use sluice_util::dashboard::{shared_asset, Asset};

/// The page.
const PAGE: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("page.html"),
};

/// The page's own script.
const SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("lb.js"),
};

/// The embedded file served at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    match path {
        "/" | "/dashboard" | "/dashboard/" => Some(PAGE),
        "/dashboard/lb.js" => Some(SCRIPT),
        other => shared_asset(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page names is served, and nothing is loaded from elsewhere.
    #[test]
    fn the_page_loads_only_embedded_files() {
        let page = PAGE.body;
        let mut named = 0;
        for attr in ["src=\"", "href=\""] {
            for part in page.split(attr).skip(1) {
                let url = part.split('"').next().unwrap_or_default();
                assert!(url.starts_with('/'), "{url} is not on this listener");
                assert!(asset(url).is_some(), "{url} is not served");
                named += 1;
            }
        }
        assert_eq!(named, 4, "two scripts, a style sheet and the icon");
        assert!(
            !page.contains("<script>"),
            "no inline script: the policy forbids it"
        );
    }
}
